import { fromBinary } from "@bufbuild/protobuf";
import { createLogger } from "@ragtune/logger";
import { ChunkSchema } from "@ragtune/proto";
import { afterEach, describe, expect, it } from "vitest";
import { DocumentPool, DocumentTimeoutError, DocumentWorkerError } from "./document-pool.js";
import { decodeChunkSet } from "./document-store.js";
import type { DocumentWork } from "./document-work.js";

const logger = createLogger({ svc: "ingest-test", level: "silent" });
const RUNAWAY = new URL("../test/runaway-worker.ts", import.meta.url);

const work = (sourceName: string): DocumentWork => ({
  collection: "c",
  sourceName,
  mediaType: "",
  bytes: new Uint8Array(),
  maxDocumentBytes: 1024,
  chunking: { tokenizer: "mistral", chunkSize: 128, overlap: 0, packSections: true },
});

let pool: DocumentPool | undefined;
afterEach(async () => {
  await pool?.close();
  pool = undefined;
});

describe("DocumentPool", () => {
  it("ends a runaway document with DocumentTimeoutError and serves the next documents on a new worker", async () => {
    pool = new DocumentPool({ size: 1, timeoutMs: 200, logger, entry: RUNAWAY });
    const runaway = pool.run(work("spin.md"));
    const queued = pool.run(work("after.md"));
    await expect(runaway).rejects.toBeInstanceOf(DocumentTimeoutError);
    await expect(runaway).rejects.toThrow(/longer than 200 ms \(INGEST_DOCUMENT_TIMEOUT\)/);
    await expect(queued).resolves.toMatchObject({ ok: false, message: expect.stringMatching(/^after\.md: served/) });
  });

  it("fails only the document whose worker exits or throws, and keeps serving", async () => {
    pool = new DocumentPool({ size: 1, timeoutMs: 60_000, logger, entry: RUNAWAY });
    await expect(pool.run(work("exit.md"))).rejects.toThrow(DocumentWorkerError);
    await expect(pool.run(work("throw.md"))).rejects.toThrow(/RangeError: Maximum call stack/);
    await expect(pool.run(work("fine.md"))).resolves.toMatchObject({ ok: false });
  });

  it("posts a worker its next document before the current one is done, so it never waits for the main thread", async () => {
    pool = new DocumentPool({ size: 1, timeoutMs: 60_000, logger, entry: RUNAWAY });
    // wait.md finishes only once the next document is in its thread: without it posted ahead, this never resolves.
    const [first, second] = await Promise.all([pool.run(work("wait.md")), pool.run(work("next.md"))]);
    expect(first).toMatchObject({ ok: false, message: "wait.md: finished after next.md arrived" });
    expect(second).toMatchObject({ ok: false, message: expect.stringMatching(/^next\.md: served/) });
  });

  it("gives the documents a dead worker held but had not started to its replacement", async () => {
    pool = new DocumentPool({ size: 1, timeoutMs: 60_000, logger, entry: RUNAWAY });
    const died = pool.run(work("exit.md"));
    const held = [pool.run(work("a.md")), pool.run(work("b.md"))];
    await expect(died).rejects.toThrow(DocumentWorkerError);
    const results = await Promise.all(held);
    expect(results.map((r) => (r.ok ? "" : r.message.replace(/ by thread .*/, "")))).toEqual(["a.md: served", "b.md: served"]);
  });

  it("runs as many documents at once as it has workers: a runaway does not hold up the others", async () => {
    pool = new DocumentPool({ size: 2, timeoutMs: 60_000, logger, entry: RUNAWAY });
    const runaway = pool.run(work("spin.md"));
    const results = await Promise.all([pool.run(work("a.md")), pool.run(work("b.md")), pool.run(work("c.md"))]);
    expect(results.map((r) => r.ok)).toEqual([false, false, false]);
    const closed = expect(runaway).rejects.toThrow(/pool closed/);
    await pool.close();
    await closed;
  });

  it("parses and chunks a real document in a worker thread", async () => {
    pool = new DocumentPool({ size: 1, timeoutMs: 60_000, logger });
    const result = await pool.run({ ...work("guide.md"), bytes: new TextEncoder().encode("# Guide\n\nBuckets hold objects.\n"), maxDocumentBytes: 1 << 20 });
    expect(result).toMatchObject({ ok: true, title: "Guide" });
    if (!result.ok) return;
    expect(decodeChunkSet(result.chunkSet)).toMatchObject([{ text: "Guide\n\nBuckets hold objects.", headingPath: ["Guide"] }]);
    expect(result.records.map((r) => fromBinary(ChunkSchema, r))).toEqual(decodeChunkSet(result.chunkSet));
    expect(result.chunks).toEqual(decodeChunkSet(result.chunkSet).map((c) => ({ id: c.id, tokenCount: c.tokenCount })));
  });
});
