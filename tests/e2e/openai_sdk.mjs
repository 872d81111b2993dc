// Drives ggfleet with the official OpenAI SDK for Node, as a user's program would. Prints one
// "ok:" or "FAIL:" line per check and exits 1 when any failed. Environment: BASE_URL (ggfleet's
// /v1), API_KEY (a ggfleet key), MODEL (a deployment name).
import OpenAI from 'openai';

const baseURL = process.env.BASE_URL;
const model = process.env.MODEL;
const client = new OpenAI({ baseURL, apiKey: process.env.API_KEY, maxRetries: 0, timeout: 120000 });
const messages = [{ role: 'user', content: 'Hello' }];
let failed = false;
function check(ok, what) {
  console.log((ok ? 'ok: ' : 'FAIL: ') + what);
  if (!ok) failed = true;
}
async function raises(what, type, call) {
  try {
    await call();
    check(false, `${what}: nothing was raised`);
  } catch (e) {
    check(e instanceof type, `${what}: ${e.constructor.name} ${e.status ?? ''} ${e.message}`);
  }
}

const list = await client.models.list();
const listed = list.data.find((m) => m.id === model);
check(listed && listed.created > 0 && listed.owned_by && listed.object === 'model',
      `models.list has ${model} with created and owned_by`);
const one = await client.models.retrieve(model);
check(one.id === model, 'models.retrieve');
await raises('models.retrieve of an unknown model', OpenAI.NotFoundError,
             () => client.models.retrieve('no-such-model'));

const chat = await client.chat.completions.create({ model, messages, max_tokens: 4 });
check(chat.model === model, `chat: model echoes the request (${chat.model})`);
check(chat.choices.length === 1 && chat.usage && chat.usage.completion_tokens > 0, 'chat: choice and usage');

let chunks = 0;
let usage = null;
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 4, stream: true, stream_options: { include_usage: true },
});
for await (const c of stream) {
  chunks += 1;
  if (c.usage) usage = c.usage;
}
check(chunks > 1, `chat stream: ${chunks} chunks`);
check(usage && usage.completion_tokens > 0, `chat stream: usage in the last chunk (${JSON.stringify(usage)})`);

const completion = await client.completions.create({ model, prompt: 'Hello', max_tokens: 4 });
check(completion.model === model && completion.choices.length === 1, 'completions');
let cchunks = 0;
for await (const c of await client.completions.create({ model, prompt: 'Hello', max_tokens: 4, stream: true })) {
  cchunks += c.choices.length;
}
check(cchunks > 0, `completions stream: ${cchunks} chunks`);

await raises('wrong key', OpenAI.AuthenticationError,
             () => new OpenAI({ baseURL, apiKey: 'wrong', maxRetries: 0 }).chat.completions.create({ model, messages }));
await raises('unknown model', OpenAI.NotFoundError,
             () => client.chat.completions.create({ model: 'no-such-model', messages }));
await raises('stream that is not a boolean', OpenAI.BadRequestError,
             () => client.chat.completions.create({ model, messages, stream: 'yes' }));
// The instance refuses a prompt longer than its context: the stream raises, it is not silent.
await raises('upstream rejection while streaming', OpenAI.APIError, async () => {
  const s = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'hello '.repeat(4000) }], max_tokens: 4, stream: true,
  });
  for await (const c of s) { void c; }
});

// Abort mid-stream, then the next request is served.
const controller = new AbortController();
let seen = 0;
try {
  const s = await client.chat.completions.create({ model, messages, max_tokens: 64, stream: true },
                                                 { signal: controller.signal });
  for await (const c of s) {
    void c;
    seen += 1;
    if (seen === 2) controller.abort();
  }
} catch (e) {
  void e;
}
check(seen >= 2, `abort after ${seen} chunks`);
const after = await client.chat.completions.create({ model, messages, max_tokens: 4 });
check(after.choices.length === 1, 'served after an aborted stream');

process.exit(failed ? 1 : 0);
