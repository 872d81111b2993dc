// Data that refreshes itself: a loader polled every `everyMs` while the page shows it. When the
// component goes away its requests still in flight are aborted, so a page that deletes what it shows
// can stop asking for it first (no answer about a deleted thing arrives afterwards).
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { messageOf } from './api';

export interface Polled<T> {
  data?: T;
  error?: string;
  reload: () => void;
}

export function usePoll<T>(
  load: (signal: AbortSignal) => Promise<T>,
  everyMs: number,
  deps: unknown[],
): Polled<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | undefined>(undefined);
  const alive = useRef(true);
  const inFlight = useRef(new AbortController());
  // `load` is a new closure on every render; `deps` say when it really asks for something else.
  const run = useCallback(() => {
    load(inFlight.current.signal).then(
      (d) => {
        if (!alive.current) return;
        setData(d);
        setError(undefined);
      },
      (e: unknown) => {
        if (alive.current) setError(messageOf(e));
      },
    );
  }, deps);
  useEffect(() => {
    alive.current = true;
    inFlight.current = new AbortController();
    run();
    const timer = everyMs > 0 ? window.setInterval(run, everyMs) : 0;
    return () => {
      alive.current = false;
      inFlight.current.abort();
      if (timer) window.clearInterval(timer);
    };
  }, [run, everyMs]);
  return { data, error, reload: run };
}
