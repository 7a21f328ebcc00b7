import { afterEach, describe, expect, it } from "vitest";
import { createLlmClient, LlmError, type StreamDelta } from "../src/index.js";
import { chatChunks, FakeServer, sendJson, sseBody, usage, writeInPieces, type FakeRequest } from "./fake-openai-server.js";

let server: FakeServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const messages = [{ role: "user" as const, content: "Greet me" }];
const PIECES = ["Grüße", " 👋", " — ", "naïve", " café", "\n", "done."];

/** Every 5th byte, plus cuts inside the 4-byte emoji, inside "data:" and "[DONE]", and between CR and LF. */
function awkwardCuts(body: Buffer): number[] {
  const cuts = [];
  for (let i = 5; i < body.length; i += 5) cuts.push(i);
  const emoji = body.indexOf(Buffer.from("👋"));
  cuts.push(emoji + 1, emoji + 2, emoji + 3);
  const data = body.indexOf("data:", 10);
  cuts.push(data + 2);
  const done = body.indexOf("[DONE]");
  cuts.push(done + 3);
  for (let i = body.indexOf("\r\n"); i !== -1; i = body.indexOf("\r\n", i + 2)) cuts.push(i + 1);
  return cuts;
}

describe("SSE streaming", () => {
  it("parses deltas split across TCP chunks (inside characters, fields, CRLF and [DONE]) and reports usage", async () => {
    const body = Buffer.from(`: keep-alive\r\n\r\n${sseBody(chatChunks(PIECES, { usage: usage(12, 7) }), { lineEnd: "\r\n" })}`);
    server = await FakeServer.start((r) => writeInPieces(r.res, body, awkwardCuts(body)));
    const client = createLlmClient({ baseUrl: server.url, model: "adapter-1" });
    const stream = client.streamChat({ messages, temperature: 0 });
    const deltas: StreamDelta[] = [];
    for await (const delta of stream) deltas.push(delta);

    expect(deltas.map((d) => d.text)).toEqual([...PIECES, ""]);
    expect(deltas.at(-1)!.finishReason).toBe("stop");
    expect(stream.text).toBe(PIECES.join(""));
    expect(stream.finishReason).toBe("stop");
    expect(stream.usage).toEqual({ promptTokens: 12, completionTokens: 7, totalTokens: 19 });
    expect(stream.latency).toMatchObject({ attempts: 1 });
    expect(stream.latency!.firstTokenMs).toBeGreaterThan(0);
    expect(server.requests[0]!.body).toMatchObject({ model: "adapter-1", stream: true, stream_options: { include_usage: true }, temperature: 0 });
    expect(server.requests[0]!.headers.accept).toBe("text/event-stream");
    expect(client.stats()).toMatchObject({ calls: 1, succeeded: 1, promptTokens: 12, completionTokens: 7, inFlight: 0 });
  });

  it("streams completions; without a usage chunk usage stays undefined", async () => {
    const chunks = ["Once", " upon", " a time"].map((text) => ({
      object: "text_completion",
      model: "base",
      choices: [{ index: 0, text, finish_reason: null as string | null }],
    }));
    chunks.push({ object: "text_completion", model: "base", choices: [{ index: 0, text: "", finish_reason: "length" }] });
    server = await FakeServer.start((r) => writeInPieces(r.res, sseBody(chunks), [3, 17, 40, 41, 99]));
    const client = createLlmClient({ baseUrl: server.url });
    const result = await client.streamCompletion({ prompt: "Tell a story", maxTokens: 3 }).collect();
    expect(server.requests[0]!.path).toBe("/v1/completions");
    expect(result.text).toBe("Once upon a time");
    expect(result.finishReason).toBe("length");
    expect(result.model).toBe("base");
    expect(result.usage).toBeUndefined();
  });

  it("reuses the connection after a stream, and keeps an answer whose server stalls after [DONE]", async () => {
    server = await FakeServer.start((r) => writeInPieces(r.res, sseBody(chatChunks([`answer ${r.n}`])), [], r.n < 2));
    const client = createLlmClient({ baseUrl: server.url, concurrency: 1, timeoutMs: 400, maxRetries: 0 });
    expect((await client.streamChat({ messages }).collect()).text).toBe("answer 0");
    expect((await client.streamChat({ messages }).collect()).text).toBe("answer 1");
    expect(server.requests[0]!.remotePort).toBe(server.requests[1]!.remotePort);
    // The third response never ends after [DONE]: the answer stands, the stalled connection is dropped.
    const third = await client.streamChat({ messages }).collect();
    expect(third.text).toBe("answer 2");
    expect(client.stats()).toMatchObject({ succeeded: 3, failed: 0 });
    await server.waitFor(() => server!.abandoned === 1);
  });

  it("retries a failure before the first delta", async () => {
    server = await FakeServer.start((r) =>
      r.n === 0 ? sendJson(r.res, 503, { error: { message: "warming up" } }) : writeInPieces(r.res, sseBody(chatChunks(["ok"])), []),
    );
    const client = createLlmClient({ baseUrl: server.url, backoff: { baseMs: 5, capMs: 5 } });
    const result = await client.streamChat({ messages }).collect();
    expect(result.text).toBe("ok");
    expect(result.latency.attempts).toBe(2);
  });

  it("a stream cut after some deltas fails as a connection error without a retry (text would repeat)", async () => {
    const body = sseBody(chatChunks(["Hello", " there"]), { done: false });
    const partial = body.slice(0, body.indexOf("there") + 8); // ends inside the second delta's event
    server = await FakeServer.start(async (r) => {
      await writeInPieces(r.res, partial, [], false);
      r.res.socket!.destroy();
    });
    const client = createLlmClient({ baseUrl: server.url });
    const stream = client.streamChat({ messages });
    const seen: string[] = [];
    const error = await (async () => {
      for await (const delta of stream) seen.push(delta.text);
    })().catch((e: unknown) => e as LlmError);
    expect(seen).toEqual(["Hello"]);
    expect(error).toMatchObject({ kind: "connection", attempts: 1 });
    expect(server.requests).toHaveLength(1);
    expect(client.stats()).toMatchObject({ failed: 1, retries: 0 });
  });

  it("a body that ends without [DONE] is an error, not a silent short answer", async () => {
    server = await FakeServer.start((r) => writeInPieces(r.res, sseBody(chatChunks(["partial"]), { done: false }), []));
    const client = createLlmClient({ baseUrl: server.url, maxRetries: 0 });
    const error = (await client.streamChat({ messages }).collect().catch((e: unknown) => e)) as LlmError;
    expect(error.kind).toBe("connection");
    expect(error.message).toMatch(/ended before \[DONE\]/);
  });

  it("leaving the loop early closes the connection and frees the slot", async () => {
    const held: FakeRequest[] = [];
    server = await FakeServer.start(async (r) => {
      held.push(r);
      await writeInPieces(r.res, sseBody(chatChunks(["one", "two"]), { done: false }), [], false); // then stays open
    });
    const s = server;
    const client = createLlmClient({ baseUrl: s.url, concurrency: 1 });
    for await (const delta of client.streamChat({ messages })) {
      if (delta.text === "one") break;
    }
    await s.waitFor(() => s.abandoned === 1);
    expect(client.stats()).toMatchObject({ inFlight: 0, cancelled: 1, failed: 0 });
  });

  it("a silent stream times out: retried before the first delta, an error after one", async () => {
    server = await FakeServer.start(async (r) => {
      if (r.n === 0) {
        r.res.writeHead(200, { "content-type": "text/event-stream" });
        r.res.flushHeaders(); // headers, then silence
        return;
      }
      await writeInPieces(r.res, sseBody(chatChunks(["first"]), { done: false }).split("\n\n").slice(0, 2).join("\n\n") + "\n\n", [], false);
    });
    const client = createLlmClient({ baseUrl: server.url, timeoutMs: 400, backoff: { baseMs: 5, capMs: 5 } });
    const stream = client.streamChat({ messages });
    const seen: string[] = [];
    const error = await (async () => {
      for await (const delta of stream) seen.push(delta.text);
    })().catch((e: unknown) => e as LlmError);
    expect(seen).toEqual(["first"]);
    expect(error).toMatchObject({ kind: "timeout", attempts: 2 });
    expect(server.requests).toHaveLength(2);
  });

  it("cancelling mid-stream ends the iteration with a cancelled error", async () => {
    server = await FakeServer.start((r) => writeInPieces(r.res, sseBody(chatChunks(["a"]), { done: false }), [], false));
    const client = createLlmClient({ baseUrl: server.url });
    const controller = new AbortController();
    const stream = client.streamChat({ messages }, { signal: controller.signal });
    const error = await (async () => {
      for await (const delta of stream) if (delta.text === "a") controller.abort();
    })().catch((e: unknown) => e as LlmError);
    expect(error).toMatchObject({ kind: "cancelled" });
    await server.waitFor(() => server!.abandoned === 1);
  });

  it("hostile streams: an error event, a data line that is not JSON, an endless line", async () => {
    const replies = [
      (r: FakeRequest) => writeInPieces(r.res, `data: ${JSON.stringify({ error: { message: "CUDA out of memory", code: 500 } })}\n\n`, []),
      (r: FakeRequest) => writeInPieces(r.res, "data: {\"choices\": [{\"delta\": \n\n", []),
      (r: FakeRequest) => writeInPieces(r.res, `data: ${"x".repeat(300_000)}`, [65_536, 131_072], false),
    ];
    server = await FakeServer.start((r) => replies[r.n]!(r));
    const client = createLlmClient({ baseUrl: server.url, maxRetries: 0, maxResponseBytes: 100_000 });
    const run = () => client.streamChat({ messages }).collect().catch((e: unknown) => e as LlmError);
    const midStream = await run();
    expect(midStream).toMatchObject({ kind: "server_error", serverMessage: "CUDA out of memory" });
    expect(await run()).toMatchObject({ kind: "malformed_json" });
    const endless = await run();
    expect(endless).toMatchObject({ kind: "server_error", retryable: false });
    expect((endless as LlmError).message).toMatch(/longer than 100000 characters/);
    await server.waitFor(() => server!.inFlight === 0);
  });
});
