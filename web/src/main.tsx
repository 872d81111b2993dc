// The dashboard: sign-in with an API key, then pages chosen by the URL's hash (#/fleet, #/deploy,
// #/deployments/NAME, #/playground, #/events, #/keys). Everything it shows comes from /v1.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, session, messageOf } from './api';
import type { Whoami } from './types';
import { FleetPage } from './pages/fleet';
import { DeployPage } from './pages/deploy';
import { DeploymentsPage, DeploymentPage } from './pages/deployment';
import { PlaygroundPage } from './pages/playground';
import { EventsPage } from './pages/events';
import { KeysPage } from './pages/keys';

function useHash(): string {
  const [hash, setHash] = useState(location.hash || '#/fleet');
  useEffect(() => {
    const on = () => setHash(location.hash || '#/fleet');
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return hash;
}

function SignIn(props: { onSignedIn: (who: Whoami) => void; message?: string }) {
  const [key, setKey] = useState('');
  const [error, setError] = useState(props.message ?? '');
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    try {
      const who = await api<Whoami>('/v1/whoami', { key: key.trim() });
      if (who.role === 'worker' || who.role === 'join') {
        setError(`a ${who.role} key cannot sign in here: use a user or admin key`);
      } else {
        session.set(key.trim());
        props.onSignedIn(who);
      }
    } catch (err) {
      setError(
        err instanceof ApiError && err.status === 401
          ? `That key was not accepted: ${err.message}.`
          : `Cannot sign in: ${messageOf(err)}`,
      );
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <h1>ggfleet</h1>
      <form onSubmit={submit} aria-describedby="signin-error">
        <label for="api-key">API key</label>
        <input
          id="api-key"
          type="password"
          autocomplete="current-password"
          value={key}
          onInput={(e) => setKey((e.target as HTMLInputElement).value)}
          required
        />
        <button type="submit" disabled={busy || !key.trim()}>
          Sign in
        </button>
        <p id="signin-error" class="error" role="alert">
          {error}
        </p>
      </form>
      <p class="hint">The key is kept in this tab's session storage only.</p>
    </main>
  );
}

const PAGES: { hash: string; label: string; admin?: boolean }[] = [
  { hash: '#/fleet', label: 'Fleet' },
  { hash: '#/deployments', label: 'Deployments' },
  { hash: '#/deploy', label: 'Deploy' },
  { hash: '#/playground', label: 'Playground' },
  { hash: '#/events', label: 'Events' },
  { hash: '#/keys', label: 'API keys', admin: true },
];

function App() {
  const hash = useHash();
  const [who, setWho] = useState<Whoami | null>(null);
  const [checking, setChecking] = useState(!!session.key());
  const [message, setMessage] = useState<string | undefined>(undefined);
  useEffect(() => {
    if (!session.key()) return;
    api<Whoami>('/v1/whoami').then(
      (w) => {
        setWho(w);
        setChecking(false);
      },
      (e: unknown) => {
        session.clear();
        setMessage(e instanceof Error ? `Signed out: ${e.message}.` : undefined);
        setChecking(false);
      },
    );
  }, []);
  if (checking) return <p class="loading">Loading…</p>;
  if (!who) return <SignIn onSignedIn={setWho} message={message} />;
  const [, page, arg] = hash.split('/');
  const signOut = () => {
    session.clear();
    setWho(null);
  };
  let body;
  switch (page) {
    case 'deploy':
      body = <DeployPage />;
      break;
    case 'deployments':
      body = arg ? <DeploymentPage name={decodeURIComponent(arg)} /> : <DeploymentsPage />;
      break;
    case 'playground':
      body = <PlaygroundPage initial={arg ? decodeURIComponent(arg) : undefined} />;
      break;
    case 'events':
      body = <EventsPage />;
      break;
    case 'keys':
      body =
        who.role === 'admin' ? (
          <KeysPage />
        ) : (
          <p class="error">API keys are for admin keys only.</p>
        );
      break;
    default:
      body = <FleetPage />;
  }
  return (
    <div class="shell">
      <header>
        <a class="brand" href="#/fleet">
          ggfleet
        </a>
        <nav aria-label="Pages">
          {PAGES.filter((p) => !p.admin || who.role === 'admin').map((p) => (
            <a
              href={p.hash}
              aria-current={
                hash.startsWith(p.hash) &&
                (p.hash !== '#/deploy' || !hash.startsWith('#/deployments'))
                  ? 'page'
                  : undefined
              }
            >
              {p.label}
            </a>
          ))}
        </nav>
        <span class="who">
          {who.name || who.id} ({who.role})
          <button type="button" class="link" onClick={signOut}>
            Sign out
          </button>
        </span>
      </header>
      <main id="page">{body}</main>
    </div>
  );
}

render(<App />, document.getElementById('app')!);
