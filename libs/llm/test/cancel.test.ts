import { afterEach, describe, expect, it } from "vitest";
import { createLlmClient, LlmError } from "../src/index.js";
import { chatResponse, FakeServer, sendJson, type FakeRequest } from "./fake-openai-server.js";

let server: FakeServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const messages = [{ role: "user" as const, content: "q" }];

async function holdingServer(): Promise<{ server: FakeServer; held: FakeRequest[] }> {
  const held: FakeRequest[] = [];
  server = await FakeServer.start((request) => {
    held.push(request);
  });
  return { server, held };
}

describe("cancelling through an AbortSignal", () => {
  it("mid-queue: the call leaves the queue, never reaches the server, and the slot keeps working", async () => {
    const { server: s, held } = await holdingServer();
    const client = createLlmClient({ baseUrl: s.url, concurrency: 1 });
    const first = client.chat({ messages: [{ role: "user", content: "first" }] });
    const controller = new AbortController();
    const queued = client.chat({ messages: [{ role: "user", content: "queued" }] }, { signal: controller.signal });
    await s.waitFor(() => held.length === 1);
    expect(client.stats()).toMatchObject({ inFlight: 1, queued: 1 });

    controller.abort();
    const error = (await queued.catch((e: unknown) => e)) as LlmError;
    expect(error).toBeInstanceOf(LlmError);
    expect(error).toMatchObject({ kind: "cancelled", retryable: false, attempts: 0 });
    expect(client.stats()).toMatchObject({ inFlight: 1, queued: 0, cancelled: 1 });

    sendJson(held.shift()!.res, 200, chatResponse("one"));
    expect((await first).text).toBe("one");
    const third = client.chat({ messages: [{ role: "user", content: "third" }] });
    await s.waitFor(() => held.length === 1);
    sendJson(held.shift()!.res, 200, chatResponse("three"));
    expect((await third).text).toBe("three");
    expect(s.requests.map((r) => (r.body!["messages"] as { content: string }[])[0]!.content)).toEqual(["first", "third"]);
  });

  it("mid-request: the connection is closed and the slot freed", async () => {
    const { server: s, held } = await holdingServer();
    const client = createLlmClient({ baseUrl: s.url, concurrency: 1 });
    const controller = new AbortController();
    const call = client.chat({ messages }, { signal: controller.signal });
    await s.waitFor(() => held.length === 1);
    controller.abort(new Error("user went away"));
    const error = (await call.catch((e: unknown) => e)) as LlmError;
    expect(error).toMatchObject({ kind: "cancelled", attempts: 1 });
    expect(error.message).toBe("LLM call cancelled: user went away");
    await s.waitFor(() => s.abandoned === 1);
    expect(client.stats()).toMatchObject({ inFlight: 0, cancelled: 1, failed: 0 });

    const next = client.chat({ messages });
    await s.waitFor(() => held.length === 2);
    sendJson(held[1]!.res, 200, chatResponse("after"));
    expect((await next).text).toBe("after");
  });

  it("during a backoff sleep: the sleeping call holds no slot and cancelling ends the sleep at once", async () => {
    server = await FakeServer.start((r) =>
      (r.body!["messages"] as { content: string }[])[0]!.content === "flaky"
        ? sendJson(r.res, 500, { error: { message: "try later" } })
        : sendJson(r.res, 200, chatResponse("other")),
    );
    const s = server;
    let sleeping!: () => void;
    const asleep = new Promise<void>((resolve) => (sleeping = resolve));
    // The backoff would be ~10 minutes: only cancelling can end this test in time.
    const client = createLlmClient({
      baseUrl: s.url,
      concurrency: 1,
      backoff: { baseMs: 600_000, capMs: 600_000 },
      random: () => 0.999,
      onRetry: () => sleeping(),
    });
    const controller = new AbortController();
    const flaky = client.chat({ messages: [{ role: "user", content: "flaky" }] }, { signal: controller.signal });
    await asleep;
    expect(client.stats()).toMatchObject({ backingOff: 1, inFlight: 0 });
    // The slot is free while it sleeps: another call goes through.
    expect((await client.chat({ messages: [{ role: "user", content: "other" }] })).text).toBe("other");

    controller.abort();
    const error = (await flaky.catch((e: unknown) => e)) as LlmError;
    expect(error).toMatchObject({ kind: "cancelled", attempts: 1 });
    expect(client.stats()).toMatchObject({ backingOff: 0, cancelled: 1, succeeded: 1, retries: 1 });
    expect(s.requests).toHaveLength(2);
  });

  it("an already aborted signal sends nothing", async () => {
    server = await FakeServer.start((r) => sendJson(r.res, 200, chatResponse("x")));
    const client = createLlmClient({ baseUrl: server.url });
    const error = (await client.chat({ messages }, { signal: AbortSignal.abort() }).catch((e: unknown) => e)) as LlmError;
    expect(error.kind).toBe("cancelled");
    expect(server.requests).toHaveLength(0);
  });

  it("the client's own signal (service shutdown) cancels calls on the wire and in the queue", async () => {
    const { server: s, held } = await holdingServer();
    const shutdown = new AbortController();
    const client = createLlmClient({ baseUrl: s.url, concurrency: 2, signal: shutdown.signal });
    const calls = Array.from({ length: 5 }, () => client.chat({ messages }).catch((e: unknown) => e as LlmError));
    await s.waitFor(() => held.length === 2);
    expect(client.stats()).toMatchObject({ inFlight: 2, queued: 3 });
    shutdown.abort();
    const errors = await Promise.all(calls);
    expect(errors.map((e) => (e as LlmError).kind)).toEqual(Array(5).fill("cancelled"));
    await s.waitFor(() => s.abandoned === 2);
    expect(client.stats()).toMatchObject({ inFlight: 0, queued: 0, cancelled: 5 });
  });
});
