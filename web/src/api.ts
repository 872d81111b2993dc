// The public /v1 API as the dashboard uses it: the key lives in session storage and goes out as a
// Bearer header; every error becomes an ApiError with the server's own message.

const KEY = 'ggfleet.key';

export const session = {
  key: (): string | null => sessionStorage.getItem(KEY),
  set: (key: string): void => sessionStorage.setItem(KEY, key),
  clear: (): void => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export function headers(json: boolean, key: string | null = session.key()): Record<string, string> {
  const h: Record<string, string> = {};
  if (key) h.Authorization = `Bearer ${key}`;
  if (json) h['Content-Type'] = 'application/json';
  return h;
}

// The message of an error body: {"error": "text"} (control API) or OpenAI's {"error": {"message"}}.
export function errorMessage(body: unknown, status: number): string {
  const e = (body as { error?: unknown } | null)?.error;
  if (typeof e === 'string') return e;
  const m = (e as { message?: unknown } | undefined)?.message;
  if (typeof m === 'string') return m;
  return `HTTP ${status}`;
}

// What went wrong, as text, whatever was thrown.
export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export async function api<T>(
  path: string,
  init: { method?: string; body?: unknown; key?: string; signal?: AbortSignal } = {},
): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method: init.method ?? 'GET',
      headers: headers(init.body !== undefined, init.key ?? session.key()),
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      signal: init.signal,
    });
  } catch {
    throw new ApiError(0, 'the server cannot be reached');
  }
  let text = '';
  try {
    text = await res.text();
  } catch {
    throw new ApiError(0, 'the answer was cut off');
  }
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!res.ok) throw new ApiError(res.status, errorMessage(body, res.status));
  return body as T;
}
