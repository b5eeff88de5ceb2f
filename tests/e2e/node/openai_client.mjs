// The official OpenAI Node SDK against modelbufd, as an application would
// call it: node openai_client.mjs BASE_URL CHAT_MODEL OTHER_MODEL
// (OPENAI_API_KEY: the daemon's key). Prints one JSON object of what it got;
// tests/e2e/test_openai.py checks it.
import OpenAI, { NotFoundError } from "openai";

const [base, chatModel, otherModel] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + "/v1", maxRetries: 0, timeout: 120000 });
const out = {};

out.list = [];
for await (const m of client.models.list()) out.list.push(m.id);
out.retrieve = await client.models.retrieve(otherModel);
try {
  await client.models.retrieve("no-such-model");
  out.missing = null;
} catch (e) {
  out.missing = { status: e.status, notFound: e instanceof NotFoundError, message: e.message };
}

const messages = [{ role: "user", content: "Say hello" }];
out.chat = await client.chat.completions.create({ model: chatModel, messages, max_tokens: 8 });
const stream = await client.chat.completions.create({
  model: otherModel, messages, max_tokens: 8, stream: true,
  stream_options: { include_usage: true },
});
out.chatChunks = [];
for await (const chunk of stream) out.chatChunks.push(chunk);

out.completion = await client.completions.create({ model: chatModel, prompt: "hello", max_tokens: 8 });
const cstream = await client.completions.create({
  model: chatModel, prompt: "hello", max_tokens: 8, stream: true,
});
out.completionChunks = [];
for await (const chunk of cstream) out.completionChunks.push(chunk);

try {
  await client.chat.completions.create({ model: "no-such-model", messages });
  out.unknown = null;
} catch (e) {
  out.unknown = { status: e.status, notFound: e instanceof NotFoundError };
}
console.log(JSON.stringify(out));
