import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { DatasetService, DatasetVersionStatus, ExampleKind, IngestService, type DatasetVersionEvent } from "@ragtune/proto";
import { Code, type Client } from "@connectrpc/connect";
import { expectCode } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DatasetTestbed, type DatasetTestService, startDatasetTestbed } from "./testbed.js";

const MODEL = "qa-writer-7b";
const MALFORMED = "Quartermaster ledgers";
const REFUSE = "Sealed archive";

/** Documents for the collection: each its own chunk. Two carry a phrase that makes the fake model misbehave. */
const DOCS: Record<string, string> = {
  "ledgers.md": `# Acme Ledger\n\nAcme Ledger records every payment as a pair of balanced entries. Each entry names the account it debits and the account it credits. A ledger closes at midnight and reopens with the balances carried forward. Closed ledgers can be read but never edited afterwards.\n`,
  "invoices.md": `# Invoices\n\nAn invoice lists the goods delivered with their unit prices and quantities. Invoices are numbered in sequence without gaps per calendar year. A cancelled invoice keeps its number and is marked void in the register. Credit notes refer to the invoice they correct by its number.\n`,
  "accounts.md": `# Accounts\n\nEvery account belongs to exactly one of five classes such as assets or liabilities. Asset accounts grow with debits while liability accounts grow with credits. An account with open entries cannot be deleted from the chart. Renaming an account keeps its number and its complete history.\n`,
  "quarter.md": `# Quarterly reports\n\n${MALFORMED} summarise the quarter across all accounts and all ledgers. The report compares each account with the same quarter of the previous year. Reports are signed by two officers before they are published to the board.\n`,
  "archive.md": `# Archive\n\n${REFUSE} rules apply to ledgers older than ten years in the vault. Archived ledgers move to cold storage and are kept for twenty more years. Requests to read an archived ledger need approval from the records officer.\n`,
  "payments.md": `# Payments\n\nPayments leave the bank account only after an approved invoice exists. Each payment run groups the due invoices by supplier and by currency. Failed payments return to the queue and are retried on the next business day.\n`,
};

interface Captured {
  body: Record<string, unknown>;
  chunk: string;
}

/** Requests whose chunk holds HOLD are kept unanswered while `hold.on`; `hold.arrived` resolves with the first one. */
const HOLD = "Held ledger";
const hold: { on: boolean; arrived: Promise<void>; signal: () => void; pending: ServerResponse[] } = (() => {
  let signal = () => {};
  const arrived = new Promise<void>((resolve) => (signal = resolve));
  return { on: true, arrived, signal, pending: [] };
})();

/** The chunk text the generator put between <<< and >>> in its prompt. */
function chunkOf(body: Record<string, unknown>): string {
  const messages = body["messages"] as { role: string; content: string }[];
  const user = messages.find((m) => m.role === "user")!.content;
  return user.slice(user.indexOf("<<<\n") + 4, user.lastIndexOf("\n>>>"));
}

/** Pairs built from the chunk's own sentences, so every answer is grounded. */
function groundedPairs(chunk: string, n: number): { kind: string; question: string; answer: string }[] {
  const sentences = chunk
    .split(/\n\s*\n/)
    .flatMap((paragraph) => paragraph.split(/(?<=\.)\s+/))
    .map((s) => s.trim())
    .filter((s) => s.endsWith(".") && s.split(" ").length >= 8);
  const kinds = ["factual", "conceptual", "comparison"];
  return Array.from({ length: n }, (_, i) => {
    const answer = sentences[i % sentences.length]!;
    const subject = answer.split(" ").slice(0, 3).join(" ").toLowerCase();
    return { kind: kinds[i % 3]!, question: `What about ${subject}?`, answer };
  });
}

/** The OpenAI chat-completions subset the client speaks, answering from the request's chunk text. */
function fakeModelServer(captured: Captured[]): Server {
  return createServer((req: IncomingMessage, res: ServerResponse) => {
    const parts: Buffer[] = [];
    req.on("data", (d: Buffer) => parts.push(d));
    req.on("end", () => {
      if (req.method !== "POST" || req.url !== "/v1/chat/completions") {
        res.writeHead(404, { "content-type": "application/json" }).end(JSON.stringify({ error: { message: `no route ${req.url}` } }));
        return;
      }
      const body = JSON.parse(Buffer.concat(parts).toString("utf8")) as Record<string, unknown>;
      const chunk = chunkOf(body);
      captured.push({ body, chunk });
      if (chunk.includes(HOLD) && hold.on) {
        hold.pending.push(res);
        hold.signal();
        return;
      }
      const format = body["response_format"] as { json_schema: { schema: { properties: { pairs: { minItems: number } } } } };
      const n = format.json_schema.schema.properties.pairs.minItems;
      let content: string;
      if (chunk.includes(MALFORMED)) content = `{"pairs": [{"kind": "factual", "question": "What do quarterly`; // cut off, every time
      else if (chunk.includes(REFUSE)) {
        content = JSON.stringify({
          pairs: groundedPairs(chunk, n).map((p) => ({ ...p, answer: "I'm sorry, but I cannot help with questions about sealed archives." })),
        });
      } else content = JSON.stringify({ pairs: groundedPairs(chunk, n) });
      res.writeHead(200, { "content-type": "application/json" }).end(
        JSON.stringify({
          id: `cmpl-${captured.length}`,
          object: "chat.completion",
          model: body["model"],
          choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
          usage: { prompt_tokens: 100, completion_tokens: 50, total_tokens: 150 },
        }),
      );
    });
  });
}

let bed: DatasetTestbed;
let ingest: DatasetTestbed["ingest"];
let dataset: DatasetTestService;
let model: Server;
const captured: Captured[] = [];
let llmEnv: Record<string, string>;

async function build(client: Client<typeof DatasetService>, request: Parameters<Client<typeof DatasetService>["buildDatasetVersion"]>[0]) {
  const { version } = await client.buildDatasetVersion(request);
  const events: DatasetVersionEvent[] = [];
  for await (const res of client.watchDatasetVersion({ datasetVersionId: version!.id })) events.push(res.event!);
  return { version: (await client.getDatasetVersion({ datasetVersionId: version!.id })).version!, events };
}

function ingestInline(collection: string, docs: Record<string, string>) {
  return bed.ingestDocuments(collection, Object.entries(docs).map(([f, t]) => [f, Buffer.from(t, "utf8")] as [string, Uint8Array]));
}

beforeAll(async () => {
  model = fakeModelServer(captured);
  await new Promise<void>((resolve) => model.listen(0, "127.0.0.1", resolve));
  const { port } = model.address() as AddressInfo;
  llmEnv = { LLM_BASE_URL: `http://127.0.0.1:${port}/v1`, LLM_MAX_RETRIES: "2", DATASET_GENERATION_BATCH_CHUNKS: "2" };
  bed = await startDatasetTestbed(llmEnv);
  ({ ingest, dataset } = bed);
  await bed.ingestDocuments("ledger", Object.entries(DOCS).map(([filename, text]) => [filename, Buffer.from(text, "utf8")] as [string, Uint8Array]));
}, 120_000);

afterAll(async () => {
  for (const res of hold.pending) res.destroy();
  await bed?.close();
  await new Promise((resolve) => model?.close(resolve));
});

describe("LLM generation (a loopback OpenAI-compatible server, real nats-server and ingest)", () => {
  it("builds a READY version from the model's grounded pairs, reporting the malformed and the refusing chunk", async () => {
    const chunks = (await ingest.client(IngestService).listChunks({ collection: "ledger", page: { pageSize: 100 } })).chunks;
    const textOf = new Map(chunks.map((c) => [c.id, c.text]));
    const malformedChunk = chunks.find((c) => c.text.includes(MALFORMED))!.id;
    const refusingChunk = chunks.find((c) => c.text.includes(REFUSE))!.id;
    expect(new Set([malformedChunk, refusingChunk]).size).toBe(2);

    const client = dataset.client(DatasetService);
    const { version } = await client.buildDatasetVersion({
      collection: "ledger",
      settings: { model: MODEL, maxConcurrency: 2, splitRatios: { train: 0.5, val: 0.25, test: 0.25 } },
    });
    const events: DatasetVersionEvent[] = [];
    for await (const res of client.watchDatasetVersion({ datasetVersionId: version!.id })) events.push(res.event!);
    const ready = (await client.getDatasetVersion({ datasetVersionId: version!.id })).version!;
    expect(ready.failure?.message ?? "").toBe("");
    expect(ready.status).toBe(DatasetVersionStatus.READY);
    expect(ready.generator).toBe(MODEL);
    expect(ready.settings!.model).toBe(MODEL);

    // Every request named the model and carried the pairs' JSON Schema (3 pairs exactly) as guided JSON.
    expect(captured.length).toBeGreaterThanOrEqual(chunks.length);
    for (const { body } of captured) {
      expect(body["model"]).toBe(MODEL);
      const format = body["response_format"] as { type: string; json_schema: { name: string; schema: Record<string, unknown> } };
      expect(format.type).toBe("json_schema");
      expect(format.json_schema.name).toBe("qa_pairs");
      const pairs = (format.json_schema.schema["properties"] as Record<string, Record<string, unknown>>)["pairs"]!;
      expect([pairs["minItems"], pairs["maxItems"]]).toEqual([3, 3]);
      expect([...((pairs["items"] as Record<string, unknown>)["required"] as string[])].sort()).toEqual(["answer", "kind", "question"]);
      expect(body["guided_json"]).toEqual(format.json_schema.schema);
    }
    // The malformed chunk was tried once and retried LLM_MAX_RETRIES (2) times, then reported.
    expect(captured.filter((c) => c.chunk.includes(MALFORMED)).length).toBe(3);

    // Warnings name both chunks; the lost pairs are counted beside the quality gate's drops.
    const warnings = events.flatMap((e) => (e.event.case === "warning" ? [e.event.value] : []));
    expect(warnings.find((w) => w.chunkId === malformedChunk)?.message).toMatch(/^malformed_output: .*not valid JSON/);
    expect(warnings.find((w) => w.chunkId === refusingChunk)?.message).toMatch(/^refused: the model refused 3 of 3 answers/);
    expect(ready.stats!.rejectedByCheck["llm_malformed_output"]).toBe(3);
    expect(ready.stats!.rejectedByCheck["llm_refused"]).toBe(3);

    // Progress per batch of chunks, up to every chunk done.
    const progress = events.flatMap((e) => (e.event.case === "progress" ? [e.event.value] : []));
    const done = progress.map((p) => p.chunksDone);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    expect(progress.some((p) => p.chunksDone > 0 && p.chunksDone < chunks.length)).toBe(true);
    expect(progress.at(-1)!.chunksDone).toBe(chunks.length);
    expect(progress.at(-1)!.chunksTotal).toBe(chunks.length);

    // The examples: answerable ones quote their own chunk; none comes from the two bad chunks.
    const examples = [];
    let pageToken = "";
    do {
      const res = await client.listExamples({ datasetVersionId: version!.id, page: { pageSize: 100, pageToken } });
      examples.push(...res.examples);
      pageToken = res.page!.nextPageToken;
    } while (pageToken !== "");
    const answerable = examples.filter((e) => e.kind === ExampleKind.ANSWERABLE);
    expect(answerable.length).toBeGreaterThan(0);
    for (const e of answerable) {
      expect(textOf.get(e.contextChunkIds[0]!)).toContain(e.answer);
      expect([malformedChunk, refusingChunk]).not.toContain(e.sourceChunkId);
    }
    expect(new Set(answerable.map((e) => e.sourceChunkId)).size).toBe(chunks.length - 2);
  }, 120_000);

  it("fails a build whose model writes no usable example, naming the chunk and why", async () => {
    const client = dataset.client(DatasetService);
    // Only the two bad chunks: a collection of the refusing and the malformed document.
    const sources = ["quarter.md", "archive.md"].map((filename) => ({
      source: { case: "inline" as const, value: { filename, mediaType: "", content: Buffer.from(DOCS[filename]!, "utf8") } },
    }));
    const ingestClient = ingest.client(IngestService);
    const { run } = await ingestClient.ingestDocuments({ collection: "bad-only", sources });
    for await (const res of ingestClient.watchIngestRun({ runId: run!.id })) void res;
    const { version } = await client.buildDatasetVersion({ collection: "bad-only", settings: { model: MODEL } });
    for await (const res of client.watchDatasetVersion({ datasetVersionId: version!.id })) void res;
    const failed = (await client.getDatasetVersion({ datasetVersionId: version!.id })).version!;
    expect(failed.status).toBe(DatasetVersionStatus.FAILED);
    expect(failed.failure!.reason).toBe("GENERATION_FAILED");
    expect(failed.failure!.message).toMatch(new RegExp(`"${MODEL}" wrote no usable example for any of 2 chunks`));
  }, 120_000);

  it("an incremental build asks the model only about new and changed chunks and reuses the base version's examples", async () => {
    const client = dataset.client(DatasetService);
    const docs = { "ledgers.md": DOCS["ledgers.md"]!, "invoices.md": DOCS["invoices.md"]!, "accounts.md": DOCS["accounts.md"]! };
    await ingestInline("ledger-inc", docs);
    const settings = { model: MODEL, maxConcurrency: 4 };
    const first = await build(client, { collection: "ledger-inc", settings });
    expect(first.version.status).toBe(DatasetVersionStatus.READY);

    // invoices.md changes, payments.md is new; ledgers.md and accounts.md are unchanged.
    const changed = DOCS["invoices.md"]!.replace("without gaps per calendar year", "without gaps per fiscal year and per branch office");
    await ingestInline("ledger-inc", { "invoices.md": changed, "payments.md": DOCS["payments.md"]! });
    const before = captured.length;
    const second = await build(client, { collection: "ledger-inc", settings, baseVersionId: first.version.id });
    expect(second.version.failure?.message ?? "").toBe("");
    expect(second.version.status).toBe(DatasetVersionStatus.READY);
    const asked = captured.slice(before).map((c) => c.chunk);
    expect(asked.length).toBe(2);
    expect(asked.some((c) => c.includes("fiscal year"))).toBe(true);
    expect(asked.some((c) => c.includes("Payments leave the bank account"))).toBe(true);
    expect(second.version.stats!.chunksReused).toBe(2);
    expect(second.version.lineage!.baseVersionId).toBe(first.version.id);
    const progress = second.events.flatMap((e) => (e.event.case === "progress" ? [e.event.value] : []));
    expect(progress[0]!.chunksReused).toBe(2);

    // The reused chunks' examples are the base version's, verbatim (same content-addressed IDs).
    const idsOf = async (id: string) => {
      const out = new Map<string, string[]>();
      for (const e of (await client.listExamples({ datasetVersionId: id, kind: ExampleKind.ANSWERABLE, page: { pageSize: 1000 } })).examples) {
        out.set(e.sourceChunkId, [...(out.get(e.sourceChunkId) ?? []), e.id].sort());
      }
      return out;
    };
    const [a, b] = [await idsOf(first.version.id), await idsOf(second.version.id)];
    const chunks = (await ingest.client(IngestService).listChunks({ collection: "ledger-inc", page: { pageSize: 100 } })).chunks;
    for (const c of chunks.filter((c) => !c.text.includes("fiscal year") && !c.text.includes("Payments leave"))) {
      if (a.has(c.id) && b.has(c.id)) expect(b.get(c.id)).toEqual(a.get(c.id));
    }

    // A base built with other generator settings cannot be reused: the request says which differ.
    await expectCode(
      client.buildDatasetVersion({ collection: "ledger-inc", settings: { ...settings, seed: 7 }, baseVersionId: first.version.id }),
      Code.FailedPrecondition,
      /base_version_id: .*seed 42 vs 7/,
    );
    await expectCode(client.buildDatasetVersion({ collection: "ledger", settings, baseVersionId: first.version.id }), Code.FailedPrecondition, /collection "ledger-inc", not "ledger"/);
    await expectCode(client.buildDatasetVersion({ collection: "ledger-inc", settings, baseVersionId: "dsv-nope" }), Code.NotFound, /dsv-nope/);
  }, 120_000);

  it("a build whose replica stops mid-generation is finished by another replica without asking the model again for finished batches", async () => {
    // Replicas of their own (bucket prefix "resume"): one batch per chunk, one batch at a time, so the order is fixed.
    const env = { ...llmEnv, DATASET_BUCKET_PREFIX: "resume", DATASET_GENERATION_BATCH_CHUNKS: "1", DATASET_BUILD_LEASE: "2s" };
    const docs = {
      "a-ledgers.md": DOCS["ledgers.md"]!,
      "b-invoices.md": DOCS["invoices.md"]!,
      "c-held.md": `# Held\n\n${HOLD} entries wait for the auditor before they are posted to the general ledger. The auditor signs each held entry with a date and a reason. Unsigned held entries expire after thirty days.\n`,
      "d-accounts.md": DOCS["accounts.md"]!,
    };
    await ingestInline("resume", docs);
    const first = await bed.startDataset(env);
    const before = captured.length;
    const { version } = await first.client(DatasetService).buildDatasetVersion({ collection: "resume", settings: { model: MODEL, maxConcurrency: 1 } });
    await hold.arrived; // the held chunk's request is on the wire: the chunks before it are done and stored
    const doneBefore = captured.slice(before).filter((c) => !c.chunk.includes(HOLD)).map((c) => c.chunk);
    await first.stop(); // the replica goes away mid-build (its claim lapses after DATASET_BUILD_LEASE)
    hold.on = false;
    const second = await bed.startDataset(env);
    try {
      const client = second.client(DatasetService);
      const events: DatasetVersionEvent[] = [];
      for await (const res of client.watchDatasetVersion({ datasetVersionId: version!.id })) events.push(res.event!);
      const ready = (await client.getDatasetVersion({ datasetVersionId: version!.id })).version!;
      expect(ready.failure?.message ?? "").toBe("");
      expect(ready.status).toBe(DatasetVersionStatus.READY);
      expect(events.some((e) => e.event.case === "warning" && /build restarted/.test(e.event.value.message))).toBe(true);
      // Every chunk finished before the stop was asked exactly once; only the held one was asked again.
      const asked = captured.slice(before).map((c) => c.chunk);
      expect(doneBefore.length).toBeGreaterThan(0);
      for (const chunk of doneBefore) expect(asked.filter((c) => c === chunk).length).toBe(1);
      expect(asked.filter((c) => c.includes(HOLD)).length).toBe(2);
      expect(asked.length).toBe(Object.keys(docs).length + 1);
      expect(new Set(ready.lineage!.documents.map((d) => d.sourceName))).toEqual(new Set(Object.keys(docs)));
    } finally {
      await second.stop();
    }
  }, 120_000);
});
