// A layout drawn as a picture (SVG): one box per worker, the main first; in each, its GPUs as bands
// over the model's blocks 0…N with the blocks they hold (and the output layer, the last slot);
// on the main, its CPU with the blocks left there and the blocks whose experts stay in its RAM;
// RPC links from each lending worker to the main with their predicted cost per token.
import type { Layout, Prediction } from './types';
import { bytes } from './format';

const WIDTH = 760;
const LEFT = 44; // the margin where the RPC links run
const LABEL = 250; // where the bands start, inside a box
const ROW = 46;
const HEAD = 28;
const GAP = 16;

interface Row {
  kind: 'gpu' | 'cpu';
  label: string;
  detail: string;
  first: number; // first block held, -1 none
  last: number;
  output: boolean;
  experts: number[]; // blocks whose routed experts stay in this worker's RAM
  device?: string;
  worker: string;
}

function rpcCostMs(prediction: Prediction | undefined, worker: string): number | null {
  if (!prediction) return null;
  let s = 0;
  let found = false;
  for (const p of prediction.breakdown ?? []) {
    if (
      p.part.startsWith('RPC calls') &&
      (p.worker === worker || p.part.includes(` on ${worker} `))
    ) {
      s += p.generation_s;
      found = true;
    }
  }
  return found ? s * 1000 : null;
}

function range(first: number, last: number, output: boolean): string {
  if (first < 0 || last < first) return output ? 'output layer' : 'no blocks';
  const b = first === last ? `block ${first}` : `blocks ${first}–${last}`;
  return output ? `${b} + output` : b;
}

// "16–22, 38–44" for [16, 17, …, 22, 38, …, 44].
function compact(blocks: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < blocks.length; ) {
    let j = i;
    while (j + 1 < blocks.length && blocks[j + 1] === blocks[j] + 1) j++;
    parts.push(i === j ? `${blocks[i]}` : `${blocks[i]}–${blocks[j]}`);
    i = j + 1;
  }
  return parts.join(', ');
}

function held(r: Row): string {
  const whole = range(r.first, r.last, r.output);
  if (r.experts.length === 0) return whole;
  const experts = `experts of blocks ${compact(r.experts)}`;
  return r.first < 0 && !r.output ? experts : `${whole}; ${experts}`;
}

export function LayoutPicture(props: { layout: Layout; prediction?: Prediction; title?: string }) {
  const { layout, prediction } = props;
  const blocks = Math.max(1, layout.total_layers - 1); // the last layer is the output head
  const slots = blocks + 1;
  const workers: string[] = [layout.main_worker];
  for (const d of layout.devices) if (!workers.includes(d.worker)) workers.push(d.worker);

  const rowsOf = (w: string): Row[] => {
    const rows: Row[] = layout.devices
      .filter((d) => d.worker === w)
      .map((d) => ({
        kind: 'gpu' as const,
        label: `${d.name} · GPU ${d.gpu}`,
        detail: `${d.gpu_name}, ${bytes(d.vram_bytes)} of ${bytes(d.free_bytes)}`,
        first: d.layers > (d.has_output ? 1 : 0) ? d.first_block : -1,
        last: d.last_block,
        output: d.has_output,
        experts: [],
        device: d.name,
        worker: w,
      }));
    if (w === layout.main_worker) {
      const experts = layout.host_expert_blocks ?? [];
      const cpuOutput = !layout.devices.some((d) => d.has_output);
      if (layout.cpu_layers > 0 || experts.length > 0 || rows.length === 0) {
        // cpu_layers counts the output layer too when it stays on the CPU.
        const cpuBlocks = Math.min(layout.cpu_layers - (cpuOutput ? 1 : 0), blocks);
        rows.push({
          kind: 'cpu',
          label: `CPU of ${w}`,
          detail: `${bytes(layout.host?.total_bytes)} of RAM${experts.length ? `, experts of ${experts.length} blocks` : ''}`,
          first: cpuBlocks > 0 ? 0 : -1,
          last: cpuBlocks - 1,
          output: cpuOutput,
          experts,
          worker: w,
        });
      }
    }
    return rows;
  };

  const boxes = workers.map((w) => ({ worker: w, rows: rowsOf(w) }));
  let y = 8;
  const placed = boxes.map((b) => {
    const top = y;
    const height = HEAD + b.rows.length * ROW + 6;
    y += height + GAP;
    return { ...b, top, height };
  });
  const height = y;
  const band = WIDTH - LEFT - LABEL - 16;
  const slotX = (k: number) => LEFT + LABEL + (band * k) / slots;
  const mainBox = placed[0];
  const summary = placed
    .map(
      (b) =>
        `${b.worker}${b.worker === layout.main_worker ? ' (main)' : ''}: ` +
        b.rows.map((r) => `${r.label} ${held(r)}`).join('; '),
    )
    .join('. ');

  return (
    <div
      class="layout-wrap"
      tabIndex={0}
      aria-label="Layout picture (scrolls sideways on narrow screens)"
    >
      <svg
        class="layout"
        viewBox={`0 0 ${WIDTH} ${height}`}
        role="img"
        aria-label={props.title ?? `Layout: main worker ${layout.main_worker}`}
      >
        <title>{props.title ?? `Layout: main worker ${layout.main_worker}`}</title>
        <desc>{summary}</desc>
        {placed.slice(1).map((b) => {
          const cost = rpcCostMs(prediction, b.worker);
          const y1 = mainBox.top + HEAD / 2;
          const y2 = b.top + HEAD / 2;
          return (
            <g class="rpc-link" data-worker={b.worker}>
              <path d={`M ${LEFT} ${y2} H ${LEFT - 22} V ${y1} H ${LEFT}`} />
              <title>{`RPC from ${b.worker} to ${layout.main_worker}${cost !== null ? `: ${cost.toFixed(2)} ms per token predicted` : ''}`}</title>
            </g>
          );
        })}
        {placed.map((b) => {
          const main = b.worker === layout.main_worker;
          const cost = main ? null : rpcCostMs(prediction, b.worker);
          return (
            <g class={`worker-box${main ? ' main' : ''}`} data-worker={b.worker}>
              <rect x={LEFT} y={b.top} width={WIDTH - LEFT - 4} height={b.height} rx={6} />
              <text class="worker-name" x={LEFT + 10} y={b.top + 19}>
                {b.worker}
                {main ? ' — main (llama-server)' : ' — rpc-server'}
              </text>
              {!main && (
                <text class="rpc-cost" x={WIDTH - 14} y={b.top + 19} text-anchor="end">
                  {`RPC to ${layout.main_worker}${cost !== null ? `: ${cost.toFixed(2)} ms/token` : ''}`}
                </text>
              )}
              {b.rows.map((r, k) => {
                const top = b.top + HEAD + k * ROW;
                const x1 = r.first >= 0 ? slotX(r.first) : 0;
                const x2 = r.first >= 0 ? slotX(r.last + 1) : 0;
                return (
                  <g
                    class={`device ${r.kind}`}
                    data-device={r.device ?? 'CPU'}
                    data-worker={r.worker}
                    data-first-block={r.first}
                    data-last-block={r.last}
                    data-output={r.output ? 'true' : 'false'}
                    data-expert-blocks={r.experts.join(',')}
                  >
                    <title>{`${r.label}: ${held(r)}`}</title>
                    <text class="device-label" x={LEFT + 10} y={top + 15}>
                      {r.label}
                    </text>
                    <text class="device-range" x={slotX(0)} y={top + 38}>
                      {held(r)}
                    </text>
                    <text class="device-detail" x={LEFT + 10} y={top + 30}>
                      {r.detail}
                    </text>
                    <rect class="band" x={slotX(0)} y={top + 4} width={band} height={20} />
                    {r.first >= 0 && (
                      <rect
                        class="held"
                        x={x1}
                        y={top + 4}
                        width={Math.max(1.5, x2 - x1)}
                        height={20}
                      />
                    )}
                    {r.output && (
                      <rect
                        class="held output"
                        x={slotX(blocks)}
                        y={top + 4}
                        width={Math.max(2, slotX(slots) - slotX(blocks))}
                        height={20}
                      />
                    )}
                    {r.experts.map((e) => (
                      <rect
                        class="experts"
                        x={slotX(e)}
                        y={top + 4}
                        width={Math.max(1.5, slotX(e + 1) - slotX(e))}
                        height={20}
                      />
                    ))}
                  </g>
                );
              })}
            </g>
          );
        })}
        <text class="scale" x={slotX(0)} y={height - 2}>
          0
        </text>
        <text
          class="scale"
          x={slotX(blocks)}
          y={height - 2}
          text-anchor="end"
        >{`${blocks - 1} | out`}</text>
      </svg>
    </div>
  );
}
