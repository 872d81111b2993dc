// The fleet: every worker with its status, last heartbeat, CPU, RAM and llama.cpp build, and each
// GPU as a bar of its memory — used by others, claimed by ggfleet's instances (named), reserved,
// free — with GPUs lent over RPC marked.
import { api } from '../api';
import { usePoll } from '../hooks';
import { ago, bytes, percent } from '../format';
import type { Claim, Gpu, Worker } from '../types';

function GpuBar(props: { worker: Worker; gpu: Gpu; index: number }) {
  const { worker, gpu, index } = props;
  const claims = worker.claims.filter((c) => c.gpu === index);
  const claimed = claims.reduce((s, c) => s + c.bytes, 0);
  const reserved = worker.resources.reserved?.vram ?? 0;
  const used = gpu.used ?? 0;
  const free = Math.max(0, gpu.vram - used - reserved - claimed);
  const lent = claims.find((c) => c.lent);
  const parts: { cls: string; bytes: number; label: string }[] = [
    { cls: 'others', bytes: used, label: 'used by others' },
    ...claims.map((c: Claim) => ({
      cls: c.lent ? 'claimed lent' : 'claimed',
      bytes: c.bytes,
      label: `${c.instance}${c.lent ? ' (lent over RPC)' : ''}`,
    })),
    { cls: 'reserved', bytes: reserved, label: 'reserved' },
    { cls: 'free', bytes: free, label: 'free' },
  ];
  const text = parts
    .filter((p) => p.bytes > 0)
    .map((p) => `${p.label} ${bytes(p.bytes)}`)
    .join(', ');
  return (
    <div class="gpu" data-gpu={index} data-worker={worker.name}>
      <div class="gpu-head">
        <span>
          GPU {index}: {gpu.name}
        </span>
        <span>
          {bytes(gpu.vram)}
          {lent && (
            <span class="badge lent" title={`lent over RPC to ${lent.deployment}`}>
              lent over RPC
            </span>
          )}
        </span>
      </div>
      <div
        class="bar"
        role="meter"
        aria-label={`GPU ${index} of ${worker.name} memory`}
        aria-valuemin={0}
        aria-valuemax={gpu.vram}
        aria-valuenow={gpu.vram - free}
        aria-valuetext={text}
      >
        {parts
          .filter((p) => p.bytes > 0)
          .map((p) => (
            <span
              class={`seg ${p.cls}`}
              style={{ width: percent(p.bytes, gpu.vram).replace(' ', '') }}
              title={`${p.label}: ${bytes(p.bytes)}`}
            />
          ))}
      </div>
      <div class="gpu-legend">{text}</div>
    </div>
  );
}

export function WorkerCard(props: { worker: Worker }) {
  const w = props.worker;
  const r = w.resources;
  const ramClaims = w.claims.filter((c) => c.gpu < 0).reduce((s, c) => s + c.bytes, 0);
  return (
    <section class="card worker" data-worker={w.name} aria-labelledby={`worker-${w.name}`}>
      <h2 id={`worker-${w.name}`}>
        {w.name} <span class={`status ${w.status}`}>{w.status}</span>
        {r.simulated && <span class="badge">declared GPUs</span>}
      </h2>
      <dl class="facts">
        <dt>Address</dt>
        <dd>{w.address}</dd>
        <dt>Last heartbeat</dt>
        <dd>{ago(w.last_heartbeat_ms)}</dd>
        <dt>CPU</dt>
        <dd>
          {r.cpu?.cores ?? '–'} cores
          {r.cpu?.memory_bandwidth ? `, ${(r.cpu.memory_bandwidth / 1e9).toFixed(0)} GB/s` : ''}
        </dd>
        <dt>RAM</dt>
        <dd>
          {bytes(r.ram?.used)} used of {bytes(r.ram?.total)}
          {ramClaims > 0 ? `, ${bytes(ramClaims)} claimed` : ''}
        </dd>
        <dt>llama.cpp</dt>
        <dd>{r.llama?.build ?? 'unknown'}</dd>
      </dl>
      {(r.gpus ?? []).length === 0 && <p>No GPUs.</p>}
      {(r.gpus ?? []).map((g, k) => (
        <GpuBar worker={w} gpu={g} index={k} />
      ))}
    </section>
  );
}

export function FleetPage() {
  const workers = usePoll(
    (signal) => api<{ workers: Worker[] }>('/v1/workers', { signal }),
    3000,
    [],
  );
  const list = workers.data?.workers ?? [];
  const gpus = list.reduce((s, w) => s + (w.resources.gpus?.length ?? 0), 0);
  return (
    <>
      <h1>Fleet</h1>
      {workers.error && (
        <p class="error" role="alert">
          {workers.error}
        </p>
      )}
      <p class="summary">
        {list.length} worker(s), {gpus} GPU(s).{' '}
        <span class="legend">
          <span class="seg others" /> used by others <span class="seg claimed" /> claimed by ggfleet{' '}
          <span class="seg claimed lent" /> lent over RPC <span class="seg reserved" /> reserved{' '}
          <span class="seg free" /> free
        </span>
      </p>
      <div class="grid">
        {list.map((w) => (
          <WorkerCard worker={w} />
        ))}
      </div>
    </>
  );
}
