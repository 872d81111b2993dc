// Data that refreshes itself: a loader polled every `everyMs` while the page shows it.
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { messageOf } from './api';

export interface Polled<T> {
  data?: T;
  error?: string;
  reload: () => void;
}

export function usePoll<T>(load: () => Promise<T>, everyMs: number, deps: unknown[]): Polled<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | undefined>(undefined);
  const alive = useRef(true);
  // `load` is a new closure on every render; `deps` say when it really asks for something else.
  const run = useCallback(() => {
    load().then(
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
    run();
    const timer = everyMs > 0 ? window.setInterval(run, everyMs) : 0;
    return () => {
      alive.current = false;
      if (timer) window.clearInterval(timer);
    };
  }, [run, everyMs]);
  return { data, error, reload: run };
}
