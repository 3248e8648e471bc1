// The openai npm package used as a Node.js application would: point base_url at barp-sidecar, keep the code.
// Usage: node openai_client.mjs BASE_URL  -> prints one JSON object with what each call returned.
import OpenAI from "openai";

const baseURL = process.argv[2];
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 10000 });
const messages = [{ role: "user", content: "Hello from Node" }];
const weatherTool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather for a city",
    parameters: { type: "object", properties: { query: { type: "string" } } },
  },
};

const { data: whole, response } = await client.chat.completions
  .create({ model: "barp-auto", messages, max_tokens: 50, barp: { quality_weight: 0.2 } })
  .withResponse();

const stream = await client.chat.completions.create({
  model: "barp-auto",
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
let streamed = "";
let usage = null;
for await (const chunk of stream) {
  if (chunk.choices.length > 0) streamed += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}

const withTool = await client.chat.completions.create({ model: "barp-auto", messages, tools: [weatherTool] });

const models = [];
for await (const model of client.models.list()) models.push(model.id);

let notFound = null;
try {
  await client.chat.completions.create({ model: "gpt-nope", messages });
} catch (error) {
  notFound = { status: error.status, code: error.code };
}

console.log(
  JSON.stringify({
    whole: {
      model: whole.model,
      content: whole.choices[0].message.content,
      decisionId: response.headers.get("x-barp-decision-id"),
      barp: whole.barp,
    },
    streamed: { content: streamed, completionTokens: usage?.completion_tokens ?? null },
    toolCall: {
      finishReason: withTool.choices[0].finish_reason,
      name: withTool.choices[0].message.tool_calls?.[0]?.function.name ?? null,
      arguments: withTool.choices[0].message.tool_calls?.[0]?.function.arguments ?? null,
    },
    models,
    notFound,
  }),
);
