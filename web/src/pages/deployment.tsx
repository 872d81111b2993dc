// Deployments: the list, and one deployment's page — its layout drawn, its instances with states
// and events, predicted against measured speed over time, memory estimated against measured per
// device, the last lines of its processes' log, scale and delete.
import { useState } from 'preact/hooks';
import { api, messageOf } from '../api';
import { usePoll } from '../hooks';
import { LayoutPicture } from '../layout';
import { SpeedChart } from '../chart';
import { ago, bytes, clock, rate } from '../format';
import type { Deployment, Event, Instance } from '../types';

export function DeploymentsPage() {
  const list = usePoll(
    (signal) => api<{ deployments: Deployment[] }>('/v1/deployments', { signal }),
    3000,
    [],
  );
  const rows = list.data?.deployments ?? [];
  return (
    <>
      <h1>Deployments</h1>
      {list.error && (
        <p class="error" role="alert">
          {list.error}
        </p>
      )}
      {rows.length === 0 && !list.error && (
        <p>
          No deployments yet. <a href="#/deploy">Deploy a model</a>.
        </p>
      )}
      {rows.length > 0 && (
        <table>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Model</th>
              <th scope="col">Replicas</th>
              <th scope="col">Instances</th>
              <th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((d) => (
              <tr>
                <td>
                  <a href={`#/deployments/${encodeURIComponent(d.name)}`}>{d.name}</a>
                </td>
                <td class="mono">{d.model}</td>
                <td>{d.replicas}</td>
                <td>
                  {Object.entries(d.instances)
                    .map(([s, n]) => `${n} ${s}`)
                    .join(', ') || 'none'}
                </td>
                <td>{ago(d.created_ms)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

function InstancePanel(props: { id: string }) {
  const inst = usePoll((signal) => api<Instance>(`/v1/instances/${props.id}`, { signal }), 2000, [
    props.id,
  ]);
  const log = usePoll(
    (signal) => api<{ log: string }>(`/v1/instances/${props.id}/logs`, { signal }),
    5000,
    [props.id],
  );
  const i = inst.data;
  if (!i)
    return (
      <section class="card">
        {inst.error ? (
          <p class="error">{inst.error}</p>
        ) : (
          <p class="loading">Loading {props.id}…</p>
        )}
      </section>
    );
  const plan = i.assignment?.plan;
  const lines = (log.data?.log ?? '')
    .split('\n')
    .filter((l) => l.trim())
    .slice(-30);
  return (
    <section
      class="card instance"
      data-instance={i.id}
      data-state={i.state}
      aria-labelledby={`inst-${i.id}`}
    >
      <h2 id={`inst-${i.id}`}>
        {i.id} <span class={`state ${i.state}`}>{i.state}</span>
        {i.main_worker && <span class="hint"> main {i.main_worker}</span>}
      </h2>
      {i.reason && <p class="reason">{i.reason}</p>}
      {i.download && i.download.total_bytes ? (
        <p>
          Downloading {bytes(i.download.done_bytes)} of {bytes(i.download.total_bytes)} at{' '}
          {bytes(i.download.rate_bytes_per_s)}/s
        </p>
      ) : null}
      <dl class="numbers">
        <div>
          <dt>Predicted generation</dt>
          <dd>{rate(i.predicted?.generation_tokens_per_s)}</dd>
        </div>
        <div>
          <dt>Measured generation</dt>
          <dd data-measured-generation>{rate(i.measured?.generation_tokens_per_s)}</dd>
        </div>
        <div>
          <dt>Predicted prompt</dt>
          <dd>{rate(i.predicted?.prompt_tokens_per_s)}</dd>
        </div>
        <div>
          <dt>Measured prompt</dt>
          <dd data-measured-prompt>{rate(i.measured?.prompt_tokens_per_s)}</dd>
        </div>
        <div>
          <dt>Requests measured</dt>
          <dd>{i.measured?.samples ?? 0}</dd>
        </div>
        <div>
          <dt>Restarts</dt>
          <dd>{i.restarts}</dd>
        </div>
      </dl>
      {plan && (
        <LayoutPicture
          layout={plan.layout}
          prediction={plan.prediction}
          title={`Layout of ${i.id}, main worker ${plan.layout.main_worker}`}
        />
      )}
      <h3>Generation speed, predicted and measured</h3>
      <SpeedChart
        history={i.measured?.history ?? []}
        predicted={i.predicted?.generation_tokens_per_s}
        label={`Speed of ${i.id}`}
      />
      {i.memory && i.memory.length > 0 && (
        <table class="memory">
          <caption>Memory per device: estimated and measured</caption>
          <thead>
            <tr>
              <th scope="col">Device</th>
              <th scope="col">Worker</th>
              <th scope="col">Estimated</th>
              <th scope="col">Measured</th>
              <th scope="col">Peak</th>
            </tr>
          </thead>
          <tbody>
            {i.memory.map((m) => (
              <tr>
                <td>{m.device}</td>
                <td>{m.worker}</td>
                <td>{bytes(m.estimated_bytes)}</td>
                <td>{bytes(m.measured_bytes)}</td>
                <td>{bytes(m.peak_bytes)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {i.assignment?.commands && (
        <details>
          <summary>Commands</summary>
          {i.assignment.commands.map((c) => (
            <pre class="mono">
              [{c.worker}] {c.line}
            </pre>
          ))}
        </details>
      )}
      <h3>Log (last lines)</h3>
      <pre class="log" tabIndex={0} aria-label={`Log of ${i.id}`}>
        {lines.join('\n') || '(empty)'}
      </pre>
    </section>
  );
}

// The page of one deployment. Deleting it first takes the view (and so its polls) away, then asks
// the server: nothing on the page keeps asking about a deployment that no longer exists.
export function DeploymentPage(props: { name: string }) {
  const [deleting, setDeleting] = useState(false);
  const [deleteError, setDeleteError] = useState('');
  const remove = async () => {
    setDeleting(true);
    setDeleteError('');
    // One turn of the event loop: the view unmounts and its requests in flight are aborted.
    await new Promise((resolve) => window.setTimeout(resolve, 0));
    try {
      await api(`/v1/deployments/${encodeURIComponent(props.name)}`, { method: 'DELETE' });
      location.hash = '#/deployments';
    } catch (e) {
      setDeleteError(messageOf(e));
      setDeleting(false);
    }
  };
  if (deleting) return <p role="status">Deleting {props.name}…</p>;
  return <DeploymentView name={props.name} onDelete={() => void remove()} error={deleteError} />;
}

function DeploymentView(props: { name: string; onDelete: () => void; error: string }) {
  const dep = usePoll(
    (signal) => api<Deployment>(`/v1/deployments/${encodeURIComponent(props.name)}`, { signal }),
    3000,
    [props.name],
  );
  const insts = usePoll(
    (signal) =>
      api<{ instances: Instance[] }>(`/v1/instances?deployment=${encodeURIComponent(props.name)}`, {
        signal,
      }),
    2000,
    [props.name],
  );
  const events = usePoll(
    (signal) => api<{ events: Event[] }>('/v1/events?order=desc&limit=200', { signal }),
    3000,
    [],
  );
  const [replicas, setReplicas] = useState<number | null>(null);
  const [error, setError] = useState('');
  const ids = (insts.data?.instances ?? []).map((i) => i.id);
  // This deployment's events since it was created (an earlier one of the same name is not it).
  const since = dep.data?.created_ms ?? 0;
  const mine = (events.data?.events ?? [])
    .filter(
      (e) =>
        e.time_ms >= since &&
        (e.subject === props.name ||
          ids.includes(e.subject) ||
          e.subject.startsWith(`${props.name}-`)),
    )
    .slice(0, 30);

  const act = async (what: () => Promise<void>) => {
    setError('');
    try {
      await what();
    } catch (e) {
      setError(messageOf(e));
    }
  };
  const scale = () =>
    act(async () => {
      await api(`/v1/deployments/${encodeURIComponent(props.name)}`, {
        method: 'PATCH',
        body: { replicas },
      });
      dep.reload();
      insts.reload();
    });
  const remove = () => {
    if (window.confirm(`Delete ${props.name} and stop its instances?`)) props.onDelete();
  };

  if (dep.error && !dep.data)
    return (
      <p class="error" role="alert">
        {dep.error}
      </p>
    );
  const d = dep.data;
  return (
    <>
      <h1>{props.name}</h1>
      {d && (
        <section class="card">
          <dl class="facts">
            <dt>Model</dt>
            <dd class="mono">{d.model}</dd>
            <dt>Options</dt>
            <dd class="mono">{JSON.stringify(d.options)}</dd>
            <dt>Replicas</dt>
            <dd>{d.replicas}</dd>
          </dl>
          <div class="actions">
            <label for="scale-replicas">Replicas</label>
            <input
              id="scale-replicas"
              type="number"
              min={0}
              max={1000}
              value={replicas ?? d.replicas}
              onInput={(e) => setReplicas(Number((e.target as HTMLInputElement).value))}
            />
            <button
              type="button"
              onClick={() => void scale()}
              disabled={replicas === null || replicas === d.replicas}
            >
              Scale
            </button>
            <a class="button" href={`#/playground/${encodeURIComponent(props.name)}`}>
              Open in playground
            </a>
            <button type="button" class="danger" onClick={remove}>
              Delete
            </button>
          </div>
          <p class="error" role="alert">
            {error || props.error}
          </p>
        </section>
      )}
      {ids.map((id) => (
        <InstancePanel id={id} />
      ))}
      {ids.length === 0 && <p>No instances.</p>}
      <section class="card">
        <h2>Events</h2>
        <ul class="events">
          {mine.map((e) => (
            <li>
              <time>{clock(e.time_ms)}</time> <span class="kind">{e.kind}</span>{' '}
              <span class="subject">{e.subject}</span>: {e.message}
            </li>
          ))}
        </ul>
      </section>
    </>
  );
}
