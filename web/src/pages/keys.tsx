// API keys (admin): the list, a form that creates one (its secret shown once), revoke.
import { useState } from 'preact/hooks';
import { api, messageOf } from '../api';
import { usePoll } from '../hooks';
import { ago } from '../format';
import type { Key } from '../types';

export function KeysPage() {
  const keys = usePoll((signal) => api<{ keys: Key[] }>('/v1/keys', { signal }), 0, []);
  const [name, setName] = useState('');
  const [role, setRole] = useState('user');
  const [secret, setSecret] = useState('');
  const [error, setError] = useState('');
  const act = async (what: () => Promise<void>) => {
    setError('');
    try {
      await what();
      keys.reload();
    } catch (e) {
      setError(messageOf(e));
    }
  };
  const create = (e: Event) => {
    e.preventDefault();
    void act(async () => {
      const k = await api<{ key: string }>('/v1/keys', {
        method: 'POST',
        body: { name: name.trim(), role },
      });
      setSecret(k.key);
      setName('');
    });
  };
  const revoke = (k: Key) =>
    act(async () => {
      if (!window.confirm(`Revoke ${k.name} (${k.id})? Clients using it stop working at once.`))
        return;
      await api(`/v1/keys/${encodeURIComponent(k.id)}`, { method: 'DELETE' });
    });
  return (
    <>
      <h1>API keys</h1>
      <form class="card row" onSubmit={create}>
        <div class="field">
          <label for="key-name">Name</label>
          <input
            id="key-name"
            value={name}
            required
            onInput={(e) => setName((e.target as HTMLInputElement).value)}
          />
        </div>
        <div class="field">
          <label for="key-role">Role</label>
          <select
            id="key-role"
            value={role}
            onChange={(e) => setRole((e.target as HTMLSelectElement).value)}
          >
            <option value="user">user</option>
            <option value="admin">admin</option>
            <option value="join">join (for workers)</option>
          </select>
        </div>
        <div class="actions">
          <button type="submit" class="primary" disabled={!name.trim()}>
            Create key
          </button>
        </div>
      </form>
      {secret && (
        <p class="card secret" role="status">
          New key (shown once): <code class="mono">{secret}</code>
        </p>
      )}
      <p class="error" role="alert">
        {error || keys.error}
      </p>
      <table>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Id</th>
            <th scope="col">Role</th>
            <th scope="col">Created</th>
            <th scope="col">
              <span class="sr-only">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {(keys.data?.keys ?? []).map((k) => (
            <tr>
              <td>{k.name}</td>
              <td class="mono">{k.id}</td>
              <td>{k.role}</td>
              <td>{ago(k.created_ms)}</td>
              <td>
                {k.role !== 'worker' && (
                  <button
                    type="button"
                    class="danger"
                    onClick={() => void revoke(k)}
                    aria-label={`Revoke ${k.name}`}
                  >
                    Revoke
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}
