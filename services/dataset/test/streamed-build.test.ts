import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { connectBus, type Bus } from "@ragtune/bus";
import type { LlmClient } from "@ragtune/llm";
import { createLogger } from "@ragtune/logger";
import { BuildDatasetVersionRequestSchema, DatasetVersionStatus, IngestRunStatus, IngestService } from "@ragtune/proto";
import { createClient, startTestService, type TestService } from "@ragtune/rpc";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ingestConfigSchema } from "../../ingest/src/config.js";
import { startIngestService } from "../../ingest/src/server.js";
import { queueBuild } from "../src/dataset-service.js";
import { GenerationQueue } from "../src/generation-queue.js";
import { VersionBuilder } from "../src/version-builder.js";
import { isFinished, openVersionStore, type VersionStore } from "../src/version-store.js";

const logger = createLogger({ svc: "streamed-build-test", level: "silent" });
const DOCS = 10;
const SECTIONS = 10;

/** Documents of SECTIONS sections, each section three sentences about its own subject (one chunk per section). */
function documents(): [string, Uint8Array][] {
  return Array.from({ length: DOCS }, (_, d) => {
    const sections = Array.from(
      { length: SECTIONS },
      (_, s) =>
        `## Ledger ${d}.${s}\n\nLedger ${d}.${s} records every payment of branch office ${s} as a pair of balanced entries. ` +
        `Each entry of ledger ${d}.${s} names the account it debits and the account it credits in that branch. ` +
        `Ledger ${d}.${s} closes at midnight and reopens with the balances of branch office ${s} carried forward.\n`,
    );
    return [`guide-${String(9 - d).padStart(2, "0")}.md`, Buffer.from(`# Guide ${d}\n\n${sections.join("\n")}`, "utf8")];
  });
}

/** A stand-in model answering with the chunk's own sentences; `firstCall` resolves with the first request. */
function groundedModel() {
  const asked: string[] = [];
  let signal = () => {};
  const firstCall = new Promise<void>((resolve) => (signal = resolve));
  const llm: Pick<LlmClient, "json"> = {
    json: (async (request: { messages: { content: string }[] }) => {
      signal();
      const user = request.messages.at(-1)!.content;
      const text = user.slice(user.indexOf("<<<\n") + 4, user.lastIndexOf("\n>>>"));
      asked.push(text);
      const sentences = text.split(/(?<=\.)\s+/).filter((s) => s.endsWith(".") && s.split(" ").length >= 8);
      const kinds = ["factual", "conceptual", "comparison"];
      const value = { pairs: sentences.slice(0, 3).map((answer, i) => ({ kind: kinds[i]!, question: `What does the guide say about ${answer.split(" ").slice(0, 5).join(" ").toLowerCase()}?`, answer })) };
      return { value, text: JSON.stringify(value), finishReason: "stop", model: "writer", usage: { promptTokens: 10, completionTokens: 5, totalTokens: 15 }, latency: { queueMs: 0, requestMs: 1, backoffMs: 0, totalMs: 1, attempts: 1 } };
    }) as unknown as LlmClient["json"],
  };
  return { llm, asked, firstCall };
}

let nats: NatsServerHandle;
let bus: Bus;
let ingest: TestService<ReturnType<typeof ingestConfigSchema.parse>>;

beforeAll(async () => {
  nats = await startNatsServer();
  bus = await connectBus({ servers: nats.url, name: "streamed-build-test", logger });
  ingest = await startTestService({ definition: { name: "ingest", schema: ingestConfigSchema, start: startIngestService }, nats });
  const client = ingest.client(IngestService);
  const { run } = await client.ingestDocuments({
    collection: "guides",
    sources: documents().map(([filename, content]) => ({ source: { case: "inline" as const, value: { filename, mediaType: "", content } } })),
    chunking: { packSections: false },
  });
  for await (const res of client.watchIngestRun({ runId: run!.id })) void res;
  expect((await client.getIngestRun({ runId: run!.id })).run!.status).toBe(IngestRunStatus.SUCCEEDED);
}, 120_000);

afterAll(async () => {
  await ingest?.stop();
  await bus?.close();
  await nats?.stop();
});

async function finished(versions: VersionStore, id: string) {
  const watch = await versions.watchState(id);
  try {
    for await (const r of watch) if (r !== null && isFinished(r.state.status)) return r.state;
  } finally {
    watch.stop();
  }
  throw new Error(`version ${id} disappeared`);
}

describe("a build with the model generates from the first page of chunks (real nats-server and ingest)", () => {
  it("asks the model while the rest of the collection is still being read, and builds the same version", async () => {
    // The ingest client the builder reads through holds every page after the first until the model has been asked.
    const real = createClient(IngestService, { baseUrl: ingest.url, protocol: "grpc", timeoutMs: 60_000 });
    let openGate = () => {};
    const gate = new Promise<void>((resolve) => (openGate = resolve));
    const heldPages: string[] = [];
    const gated = new Proxy(real, {
      get(target, prop, receiver) {
        if (prop !== "listChunks") return Reflect.get(target, prop, receiver);
        return async (req: Parameters<Client<typeof IngestService>["listChunks"]>[0]) => {
          if ((req.page?.pageToken ?? "") !== "") {
            heldPages.push(req.page!.pageToken!);
            await gate;
          }
          return target.listChunks(req);
        };
      },
    });
    const prefix = "streamed";
    const versions = await openVersionStore(bus, prefix);
    const generation = await GenerationQueue.open(bus, { prefix, logger, worker: "w1", batchChunks: 8, ackWaitMs: 30_000 });
    const model = groundedModel();
    generation.startWorkers(2, model.llm, async (id) => {
      const v = await versions.get(id);
      return v !== null && !isFinished(v.state.status);
    });
    const builder = new VersionBuilder({
      versions,
      artifacts: await bus.artifacts(`${prefix}-artifacts`),
      ingest: gated,
      tokenizer: "mistral",
      logger,
      leaseMs: 30_000,
      buildTimeoutMs: 120_000,
      generation,
    });
    try {
      const request = create(BuildDatasetVersionRequestSchema, { collection: "guides", settings: { model: "writer", maxConcurrency: 8, negativeRatio: 0 } });
      const version = await queueBuild({ versions, builder, logger, llmConfigured: true }, request);
      // Fails here (times out) if the build waited for every chunk before the first batch.
      await model.firstCall;
      expect(heldPages).toHaveLength(1); // the second page was asked for and is still held
      const askedWhileReading = model.asked.length;
      openGate();
      const ready = await finished(versions, version.id);
      expect(ready.failure?.message ?? "").toBe("");
      expect(ready.status).toBe(DatasetVersionStatus.READY);
      expect(askedWhileReading).toBeGreaterThan(0);
      // Every chunk asked once, and all of them in the version: 3 pairs each.
      const chunks = (await real.listChunks({ collection: "guides", page: { pageSize: 1000 } })).chunks;
      expect(chunks).toHaveLength(DOCS * SECTIONS);
      expect(new Set(model.asked).size).toBe(DOCS * SECTIONS);
      expect(model.asked).toHaveLength(DOCS * SECTIONS);
      expect(ready.stats!.chunksTotal).toBe(DOCS * SECTIONS);
      expect(ready.stats!.generated).toBe(3 * DOCS * SECTIONS);
    } finally {
      openGate();
      await builder.close();
      await generation.close();
    }
  }, 120_000);
});
