// Predicted against measured generation speed over time, drawn by uPlot: one point per request
// the proxy measured (single-stream and concurrent apart), the prediction as a line.
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import type { HistoryPoint } from './types';

export function SpeedChart(props: {
  history: HistoryPoint[];
  predicted: number | undefined;
  label: string;
}) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const points = props.history.filter((h) => h.generation_tokens_per_s !== null);

  useEffect(() => {
    const el = host.current;
    if (!el) return;
    // The prediction is a line over the whole span: points at its two ends carry it.
    const first = points.length ? points[0].time_ms / 1000 : Date.now() / 1000 - 60;
    const last = Math.max(
      points.length ? points[points.length - 1].time_ms / 1000 : 0,
      Date.now() / 1000,
    );
    const xs = [first - 5, ...points.map((h) => h.time_ms / 1000), last + 5];
    const ends = <T,>(inner: T[]): (T | null)[] => [null, ...inner, null];
    const alone = ends(points.map((h) => (h.alone ? h.generation_tokens_per_s : null)));
    const shared = ends(points.map((h) => (h.alone ? null : h.generation_tokens_per_s)));
    const predicted = xs.map(() => props.predicted ?? null);
    const data: uPlot.AlignedData = [xs, alone, shared, predicted];
    // Far apart (a declared GPU served by a CPU), both stay readable on a log scale.
    const values = [
      ...points.map((h) => h.generation_tokens_per_s ?? 0),
      props.predicted ?? 0,
    ].filter((v) => v > 0);
    const log = values.length > 1 && Math.max(...values) / Math.min(...values) > 20;
    const width = Math.max(280, Math.min(760, el.clientWidth || 760));
    if (plot.current && plot.current.scales.y.distr === (log ? 3 : 1)) {
      plot.current.setData(data);
      return;
    }
    plot.current?.destroy();
    const dots = { show: true, size: 7 };
    plot.current = new uPlot(
      {
        width,
        height: 220,
        scales: {
          x: { time: true },
          y: log ? { distr: 3 } : { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] },
        },
        axes: [{}, { label: log ? 'tokens/s (log scale)' : 'tokens/s', size: 60 }],
        series: [
          {},
          {
            label: 'measured (alone)',
            stroke: '#1f6feb',
            width: 0,
            points: { ...dots, fill: '#1f6feb' },
          },
          {
            label: 'measured (concurrent)',
            stroke: '#9a6700',
            width: 0,
            points: { ...dots, fill: '#9a6700' },
          },
          {
            label: 'predicted',
            stroke: '#2da44e',
            width: 2,
            dash: [6, 4],
            points: { show: false },
          },
        ],
      },
      data,
      el,
    );
  });
  useEffect(
    () => () => {
      plot.current?.destroy();
      plot.current = null;
    },
    [],
  );
  return (
    <figure class="chart">
      <div
        ref={host}
        role="img"
        aria-label={`${props.label}: ${points.length} measured requests, predicted ${props.predicted?.toFixed(1) ?? 'unknown'} tokens/s`}
      />
      {points.length === 0 && (
        <figcaption>No request measured yet: send one from the playground.</figcaption>
      )}
    </figure>
  );
}
