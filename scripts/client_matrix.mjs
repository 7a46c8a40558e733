// The openai Node SDK's part of scripts/client_matrix.py: node client_matrix.mjs BASE_URL (with NODE_PATH or
// a node_modules holding `openai`). Prints {feature: "ok" | "FAIL (why)"} as JSON.
import { createRequire } from "node:module";

const require = createRequire(process.env.NODE_PATH ? `${process.env.NODE_PATH}/` : import.meta.url);
const OpenAI = require("openai").default ?? require("openai");
const client = new OpenAI({ baseURL: process.argv[2], apiKey: "unused", maxRetries: 0, timeout: 300_000 });

const weather = { type: "function", function: {
  name: "get_weather", description: "Get the current weather in a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"],
                additionalProperties: false } } };
const ask = [{ role: "user", content: "What is the weather in Paris?" }];
const history = [...ask,
  { role: "assistant", content: null, tool_calls: [
    { id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city": "Paris"}' } }] },
  { role: "tool", tool_call_id: "call_1", content: '{"temperature_c": 18, "sky": "sunny"}' }];
const hello = [{ role: "user", content: "Say hello." }];
const person = { type: "object", properties: { name: { type: "string" }, age: { type: "integer" } },
                 required: ["name", "age"], additionalProperties: false };

async function cell(fn) {
  try {
    const r = await fn();
    return r === true ? "ok" : `FAIL (${r})`;
  } catch (e) {
    return `FAIL (${e.constructor.name}: ${String(e.message).split(/\s+/).join(" ").slice(0, 90)})`;
  }
}

const create = (body) => client.chat.completions.create({ model: "router", ...body });
const out = {
  "plain chat": await cell(async () =>
    Boolean((await create({ messages: hello, max_tokens: 16 })).choices[0].message.content)),
  "streaming": await cell(async () => {
    let text = "";
    for await (const c of await create({ messages: hello, max_tokens: 16, stream: true }))
      text += c.choices[0]?.delta?.content ?? "";
    return text.length > 0 || "no text";
  }),
  "tools": await cell(async () => {
    const m = (await create({ messages: ask, tools: [weather], tool_choice: "required", max_tokens: 40 }))
      .choices[0].message;
    return (m.tool_calls?.[0]?.function?.name === "get_weather"
            && typeof JSON.parse(m.tool_calls[0].function.arguments) === "object") || "no tool call";
  }),
  "tool history": await cell(async () => {
    const m = (await create({ messages: history, tools: [weather], max_tokens: 40 })).choices[0].message;
    return Boolean(m.content || m.tool_calls) || "empty answer";
  }),
  "json_object": await cell(async () => {
    const t = (await create({ messages: [{ role: "user", content: "Describe Paris as JSON." }],
                              response_format: { type: "json_object" }, max_tokens: 80 })).choices[0].message.content;
    const v = JSON.parse(t ?? "null");
    return (v !== null && typeof v === "object" && !Array.isArray(v)) || "not a JSON object";
  }),
  "json_schema / parse": await cell(async () => {
    const t = (await create({ messages: [{ role: "user", content: "Invent a person." }], max_tokens: 60,
      response_format: { type: "json_schema", json_schema: { name: "person", schema: person, strict: true } } }))
      .choices[0].message.content;
    const v = JSON.parse(t);
    return (typeof v.name === "string" && Number.isInteger(v.age)) || "not the schema";
  }),
  "logprobs": await cell(async () => {
    const lp = (await create({ messages: hello, max_tokens: 8, logprobs: true, top_logprobs: 2 }))
      .choices[0].logprobs;
    return Boolean(lp?.content?.length && lp.content[0].top_logprobs?.length) || "no logprobs";
  }),
};
console.log(JSON.stringify(out));
