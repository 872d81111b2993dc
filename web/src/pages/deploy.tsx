// Deploy with a preview: the model and the options users set; "Preview" asks the planner
// (POST /v1/plan) and draws its choice — layout, prediction, why this main worker, the
// alternatives and the workers not used — then "Deploy" creates the deployment.
import { useState } from 'preact/hooks';
import { api, messageOf } from '../api';
import { LayoutPicture } from '../layout';
import { rate, seconds } from '../format';
import type { Plan } from '../types';

export function PlanView(props: { plan: Plan }) {
  const p = props.plan;
  if (!p.feasible || !p.layout || !p.prediction) {
    return (
      <section class="card plan" aria-live="polite">
        <h2>No layout fits</h2>
        <p class="error">{p.reason}</p>
        <Rejected plan={p} />
      </section>
    );
  }
  const pr = p.prediction;
  const best = pr.generation_tokens_per_s;
  return (
    <section class="card plan" aria-live="polite" data-main-worker={p.layout.main_worker}>
      <h2>
        Main worker <span class="main-worker">{p.layout.main_worker}</span>
      </h2>
      <dl class="numbers">
        <div>
          <dt>Generation</dt>
          <dd>{rate(pr.generation_tokens_per_s)}</dd>
        </div>
        <div>
          <dt>Prompt</dt>
          <dd>{rate(pr.prompt_tokens_per_s)}</dd>
        </div>
        <div>
          <dt>First token (512-token prompt)</dt>
          <dd>{seconds(pr.time_to_first_token_s)}</dd>
        </div>
        <div>
          <dt>Start-up</dt>
          <dd>
            {seconds(pr.startup_s)}
            {pr.download_s ? ` (download ${seconds(pr.download_s)})` : ''}
          </dd>
        </div>
      </dl>
      <p class="why">
        <strong>Why {p.layout.main_worker}:</strong>{' '}
        {p.why_main || `no other main worker can use these GPUs; bottleneck: ${pr.bottleneck}`}
      </p>
      {p.notes.map((n) => (
        <p class="note">{n}</p>
      ))}
      <LayoutPicture
        layout={p.layout}
        prediction={pr}
        title={`Planned layout, main worker ${p.layout.main_worker}`}
      />
      <p class="hint">Bottleneck: {pr.bottleneck}.</p>
      {p.alternatives.length > 0 && (
        <table class="alternatives">
          <caption>Alternatives the planner weighed</caption>
          <thead>
            <tr>
              <th scope="col">Layout</th>
              <th scope="col">Main</th>
              <th scope="col">Generation</th>
              <th scope="col">Prompt</th>
              <th scope="col">GPUs</th>
              <th scope="col">Bottleneck</th>
            </tr>
          </thead>
          <tbody>
            {p.alternatives.map((a) => (
              <tr>
                <td>{a.label}</td>
                <td>{a.layout.main_worker}</td>
                <td>
                  {rate(a.prediction.generation_tokens_per_s)} (
                  {(100 * (1 - a.prediction.generation_tokens_per_s / best)).toFixed(0)} % slower)
                </td>
                <td>{rate(a.prediction.prompt_tokens_per_s)}</td>
                <td>{a.layout.devices.length}</td>
                <td>{a.prediction.bottleneck}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <Rejected plan={p} />
      <p class="hint">
        {p.layouts_evaluated} layouts evaluated over {p.mains_evaluated} main workers.
      </p>
    </section>
  );
}

function Rejected(props: { plan: Plan }) {
  if (props.plan.rejected.length === 0) return null;
  return (
    <div class="rejected">
      <h3>Workers not used</h3>
      <ul>
        {props.plan.rejected.map((r) => (
          <li>
            <strong>{r.worker}</strong>: {r.reason}
          </li>
        ))}
      </ul>
    </div>
  );
}

function Field(props: {
  id: string;
  label: string;
  hint?: string;
  children: preact.ComponentChildren;
}) {
  return (
    <div class="field">
      <label for={props.id}>{props.label}</label>
      {props.children}
      {props.hint && <small id={`${props.id}-hint`}>{props.hint}</small>}
    </div>
  );
}

export function DeployPage() {
  const [name, setName] = useState('');
  const [model, setModel] = useState('');
  const [replicas, setReplicas] = useState(1);
  const [context, setContext] = useState(4096);
  const [parallel, setParallel] = useState(1);
  const [main, setMain] = useState('');
  const [experts, setExperts] = useState(true);
  const [plan, setPlan] = useState<Plan | null>(null);
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);

  const options = () => {
    const o: Record<string, unknown> = { context, parallel };
    if (main.trim()) o.main = main.trim();
    if (!experts) o.expert_offload = false;
    return o;
  };
  const run = async (what: () => Promise<void>) => {
    setBusy(true);
    setError('');
    try {
      await what();
    } catch (e) {
      setError(messageOf(e));
    } finally {
      setBusy(false);
    }
  };
  const preview = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      setPlan(null);
      setPlan(
        await api<Plan>('/v1/plan', {
          method: 'POST',
          body: { model: model.trim(), options: options(), replicas },
        }),
      );
    });
  };
  const deploy = () =>
    run(async () => {
      await api('/v1/deployments', {
        method: 'POST',
        body: { name: name.trim(), model: model.trim(), replicas, options: options() },
      });
      location.hash = `#/deployments/${encodeURIComponent(name.trim())}`;
    });
  const num = (set: (v: number) => void) => (e: Event) =>
    set(Number((e.target as HTMLInputElement).value));

  return (
    <>
      <h1>Deploy a model</h1>
      <form class="card deploy" onSubmit={preview}>
        <Field
          id="dep-name"
          label="Deployment name"
          hint="lower-case letters, digits and dashes; the OpenAI model name"
        >
          <input
            id="dep-name"
            value={name}
            pattern="[a-z0-9][a-z0-9-]*"
            aria-describedby="dep-name-hint"
            onInput={(e) => setName((e.target as HTMLInputElement).value)}
          />
        </Field>
        <Field
          id="dep-model"
          label="Model"
          hint="a path on the workers, an http(s):// URL or hf://OWNER/REPO/FILE"
        >
          <input
            id="dep-model"
            value={model}
            required
            aria-describedby="dep-model-hint"
            onInput={(e) => setModel((e.target as HTMLInputElement).value)}
          />
        </Field>
        <div class="row">
          <Field id="dep-replicas" label="Replicas">
            <input
              id="dep-replicas"
              type="number"
              min={1}
              max={1000}
              value={replicas}
              onInput={num(setReplicas)}
            />
          </Field>
          <Field id="dep-context" label="Context (tokens)">
            <input
              id="dep-context"
              type="number"
              min={256}
              step={256}
              value={context}
              onInput={num(setContext)}
            />
          </Field>
          <Field id="dep-parallel" label="Parallel slots">
            <input
              id="dep-parallel"
              type="number"
              min={1}
              max={256}
              value={parallel}
              onInput={num(setParallel)}
            />
          </Field>
          <Field id="dep-main" label="Main worker (optional)">
            <input
              id="dep-main"
              value={main}
              onInput={(e) => setMain((e.target as HTMLInputElement).value)}
            />
          </Field>
        </div>
        <div class="check">
          <input
            id="dep-experts"
            type="checkbox"
            checked={experts}
            onChange={(e) => setExperts((e.target as HTMLInputElement).checked)}
          />
          <label for="dep-experts">MoE models may keep experts in the main's RAM</label>
        </div>
        <div class="actions">
          <button type="submit" disabled={busy || !model.trim()}>
            Preview
          </button>
          <button
            type="button"
            class="primary"
            disabled={busy || !model.trim() || !name.trim()}
            onClick={() => void deploy()}
          >
            Deploy
          </button>
        </div>
        <p class="error" role="alert">
          {error}
        </p>
      </form>
      {busy && !plan && <p class="loading">Planning…</p>}
      {plan && <PlanView plan={plan} />}
    </>
  );
}
