import { afterEach, describe, expect, it } from "vitest";
import { createLlmClient } from "../src/index.js";
import { completionResponse, FakeServer, sendJson, type FakeRequest } from "./fake-openai-server.js";

let server: FakeServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

describe("the concurrency limit", () => {
  it("keeps at most 4 of 20 calls on the wire and serves the queue in call order", async () => {
    const held: FakeRequest[] = [];
    server = await FakeServer.start((request) => {
      held.push(request); // answered below, one at a time
    });
    const s = server;
    const client = createLlmClient({ baseUrl: s.url, concurrency: 4 });
    const calls = Array.from({ length: 20 }, (_, i) => client.complete({ prompt: `call ${i}` }));

    for (let answered = 0; answered < 20; answered++) {
      // Stable state: every call that can have a slot has reached the server, nothing else has.
      await s.waitFor(() => s.requests.length === Math.min(20, answered + 4) && s.inFlight === Math.min(4, 20 - answered));
      // While calls still queue, a request reaching the server means the client handed the slot on: its own
      // counts agree. (Later the server may close a response before the client has read it.)
      if (answered <= 16) expect(client.stats()).toMatchObject({ inFlight: 4, queued: 16 - answered });
      const next = held.shift()!;
      sendJson(next.res, 200, completionResponse(`answer to ${String(next.body!["prompt"])}`));
    }

    const results = await Promise.all(calls);
    expect(results.map((r) => r.text)).toEqual(Array.from({ length: 20 }, (_, i) => `answer to call ${i}`));
    expect(s.maxInFlight).toBe(4);
    expect(s.requests.map((r) => r.body!["prompt"])).toEqual(Array.from({ length: 20 }, (_, i) => `call ${i}`));
    expect(client.stats()).toMatchObject({ calls: 20, succeeded: 20, inFlight: 0, queued: 0 });
  });

  it("reports the time a call waited for a slot as queueMs", async () => {
    const held: FakeRequest[] = [];
    server = await FakeServer.start((request) => {
      held.push(request);
    });
    const s = server;
    const client = createLlmClient({ baseUrl: s.url, concurrency: 1 });
    const first = client.complete({ prompt: "first" });
    const second = client.complete({ prompt: "second" });
    const queuedSince = performance.now(); // "second" is queued from before this moment...
    await s.waitFor(() => held.length === 1);
    expect(client.stats().queued).toBe(1);
    const releasedAt = performance.now(); // ...until after this one
    sendJson(held.shift()!.res, 200, completionResponse("1"));
    await s.waitFor(() => held.length === 1);
    sendJson(held.shift()!.res, 200, completionResponse("2"));
    const [a, b] = await Promise.all([first, second]);
    expect(b.latency.queueMs).toBeGreaterThanOrEqual(releasedAt - queuedSince);
    expect(b.latency.totalMs).toBeGreaterThanOrEqual(b.latency.queueMs + b.latency.requestMs);
    expect(a.latency.attempts + b.latency.attempts).toBe(2);
  });

  it("holds when responses come back in any order, also with bursts of answers", async () => {
    const held: FakeRequest[] = [];
    server = await FakeServer.start((request) => {
      held.push(request);
    });
    const s = server;
    const client = createLlmClient({ baseUrl: s.url, concurrency: 4 });
    const calls = Array.from({ length: 20 }, (_, i) => client.complete({ prompt: `p${i}` }));
    let answered = 0;
    while (answered < 20) {
      await s.waitFor(() => s.requests.length === Math.min(20, answered + 4) && held.length === Math.min(4, 20 - answered));
      // Answer the held ones newest first, all at once.
      for (const request of held.splice(0).reverse()) {
        sendJson(request.res, 200, completionResponse("ok"));
        answered++;
      }
    }
    await Promise.all(calls);
    expect(s.maxInFlight).toBe(4);
    expect(s.requests).toHaveLength(20);
  });
});
