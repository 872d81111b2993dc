// Playground: chat with a deployment through the OpenAI endpoint, streamed, with each answer's
// time to first token and tokens/s as this browser saw them.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, errorMessage, headers, messageOf } from '../api';
import { usePoll } from '../hooks';
import type { Deployment } from '../types';

interface Turn {
  role: 'user' | 'assistant';
  content: string;
  ttft_s?: number;
  tokens_per_s?: number;
  tokens?: number;
  error?: string;
}

// Streams one chat completion; calls onText with each piece of content. Returns the token count
// (the usage the server reported, else the chunks that carried content) and the times.
async function stream(
  model: string,
  messages: { role: string; content: string }[],
  maxTokens: number,
  signal: AbortSignal,
  onText: (t: string) => void,
): Promise<{ tokens: number; ttft_s: number; total_s: number }> {
  const started = performance.now();
  const res = await fetch('/v1/chat/completions', {
    method: 'POST',
    headers: headers(true),
    body: JSON.stringify({
      model,
      messages,
      max_tokens: maxTokens,
      stream: true,
      stream_options: { include_usage: true },
    }),
    signal,
  });
  if (!res.ok || !res.body) {
    let body: unknown = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    throw new Error(errorMessage(body, res.status));
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  let first = 0;
  let chunks = 0;
  let usage = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, cut).trim();
      buffered = buffered.slice(cut + 1);
      if (!line.startsWith('data:')) continue;
      const data = line.slice(5).trim();
      if (data === '[DONE]') continue;
      let chunk: {
        choices?: { delta?: { content?: string } }[];
        usage?: { completion_tokens?: number };
        error?: unknown;
      };
      try {
        chunk = JSON.parse(data);
      } catch {
        continue;
      }
      if (chunk.error) throw new Error(errorMessage(chunk, 500));
      const text = chunk.choices?.[0]?.delta?.content;
      if (text) {
        if (!first) first = performance.now();
        chunks++;
        onText(text);
      }
      if (chunk.usage?.completion_tokens) usage = chunk.usage.completion_tokens;
    }
  }
  const end = performance.now();
  return {
    tokens: usage || chunks,
    ttft_s: ((first || end) - started) / 1000,
    total_s: (end - (first || end)) / 1000,
  };
}

export function PlaygroundPage(props: { initial?: string }) {
  const deployments = usePoll(
    (signal) => api<{ deployments: Deployment[] }>('/v1/deployments', { signal }),
    5000,
    [],
  );
  const [model, setModel] = useState(props.initial ?? '');
  const [turns, setTurns] = useState<Turn[]>([]);
  const [input, setInput] = useState('');
  const [maxTokens, setMaxTokens] = useState(128);
  const [busy, setBusy] = useState(false);
  const abort = useRef<AbortController | null>(null);
  const names = (deployments.data?.deployments ?? []).map((d) => d.name);
  useEffect(() => {
    if (!model && names.length > 0) setModel(names[0]);
  }, [names.join(',')]);
  useEffect(() => () => abort.current?.abort(), []);

  const send = async (e: Event) => {
    e.preventDefault();
    const text = input.trim();
    if (!text || !model) return;
    const history = [...turns.filter((t) => !t.error), { role: 'user' as const, content: text }];
    setTurns([...history, { role: 'assistant', content: '' }]);
    setInput('');
    setBusy(true);
    abort.current = new AbortController();
    let answer = '';
    const update = (patch: Partial<Turn>) =>
      setTurns([...history, { role: 'assistant', content: answer, ...patch }]);
    try {
      const r = await stream(
        model,
        history.map((t) => ({ role: t.role, content: t.content })),
        maxTokens,
        abort.current.signal,
        (piece) => {
          answer += piece;
          update({});
        },
      );
      update({
        ttft_s: r.ttft_s,
        tokens: r.tokens,
        tokens_per_s: r.total_s > 0 ? r.tokens / r.total_s : undefined,
      });
    } catch (err) {
      update({ error: messageOf(err) });
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <h1>Playground</h1>
      <form class="card playground" onSubmit={send}>
        <div class="row">
          <div class="field">
            <label for="pg-model">Deployment</label>
            <select
              id="pg-model"
              value={model}
              onChange={(e) => setModel((e.target as HTMLSelectElement).value)}
            >
              {names.length === 0 && <option value="">no deployments</option>}
              {names.map((n) => (
                <option value={n}>{n}</option>
              ))}
            </select>
          </div>
          <div class="field">
            <label for="pg-max">Max tokens</label>
            <input
              id="pg-max"
              type="number"
              min={1}
              max={4096}
              value={maxTokens}
              onInput={(e) => setMaxTokens(Number((e.target as HTMLInputElement).value))}
            />
          </div>
        </div>
        <ol class="chat" aria-live="polite" aria-label="Conversation">
          {turns.map((t) => (
            <li class={`turn ${t.role}`}>
              <span class="role">{t.role === 'user' ? 'You' : model}</span>
              <p class="content">
                {t.content || (t.role === 'assistant' && busy && !t.error ? '…' : '')}
              </p>
              {t.error && (
                <p class="error" role="alert">
                  {t.error}
                </p>
              )}
              {t.ttft_s !== undefined && (
                <p class="stats">
                  first token after <span class="ttft">{(t.ttft_s * 1000).toFixed(0)} ms</span>,{' '}
                  <span class="tps">
                    {t.tokens_per_s !== undefined ? t.tokens_per_s.toFixed(1) : '–'} tokens/s
                  </span>{' '}
                  ({t.tokens} tokens)
                </p>
              )}
            </li>
          ))}
        </ol>
        <div class="field">
          <label for="pg-input">Message</label>
          <textarea
            id="pg-input"
            rows={3}
            value={input}
            onInput={(e) => setInput((e.target as HTMLTextAreaElement).value)}
          />
        </div>
        <div class="actions">
          <button type="submit" class="primary" disabled={busy || !model || !input.trim()}>
            Send
          </button>
          <button type="button" disabled={!busy} onClick={() => abort.current?.abort()}>
            Stop
          </button>
          <button type="button" disabled={busy} onClick={() => setTurns([])}>
            Clear
          </button>
        </div>
      </form>
    </>
  );
}
