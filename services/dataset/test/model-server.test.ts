import { spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startModelServer } from "@ragtune/model-server";
import { DatasetService, DatasetVersionStatus, type DatasetVersionEvent } from "@ragtune/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DatasetTestbed, startDatasetTestbed } from "./testbed.js";

const WORKER = fileURLToPath(new URL("../../trainer/worker", import.meta.url));
const PYTHON = join(WORKER, ".venv", "bin", "python");

let dir: string;
let server: Awaited<ReturnType<typeof startModelServer>>;
let bed: DatasetTestbed;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "dataset-model-server-"));
  const made = spawnSync(PYTHON, ["-m", "ragtune_worker.tiny_model", "--out", join(dir, "tiny")], { cwd: WORKER, encoding: "utf8" });
  if (made.status !== 0) throw new Error(`making the tiny model failed: ${made.stderr}`);
  server = await startModelServer({ model: join(dir, "tiny", "model.gguf"), port: 0, concurrency: 2 });
  bed = await startDatasetTestbed({ LLM_BASE_URL: server.baseUrl, LLM_MAX_RETRIES: "1", DATASET_GENERATION_BATCH_CHUNKS: "2" });
  await bed.ingestDocuments("tiny", [
    ["ledgers.md", Buffer.from("# Ledgers\n\nA ledger closes at midnight and reopens with the balances carried forward.\n", "utf8")],
    ["invoices.md", Buffer.from("# Invoices\n\nInvoices are numbered in sequence without gaps per calendar year.\n", "utf8")],
  ]);
}, 180_000);

afterAll(async () => {
  await bed?.close();
  await server?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("LLM generation against the local model server (tiny random model, real nats-server and ingest)", () => {
  it("gets schema-valid JSON for every chunk through the server's grammar, and the quality gate drops the random model's pairs, saying why", async () => {
    const client = bed.dataset.client(DatasetService);
    const { version } = await client.buildDatasetVersion({ collection: "tiny", settings: { model: server.baseModel, questionsPerChunk: 1, maxConcurrency: 2, temperature: 0 } });
    const events: DatasetVersionEvent[] = [];
    for await (const res of client.watchDatasetVersion({ datasetVersionId: version!.id })) events.push(res.event!);
    const done = (await client.getDatasetVersion({ datasetVersionId: version!.id })).version!;
    // Every chunk's output parsed and matched the schema: no chunk failed as malformed output or a rejected request.
    const warnings = events.flatMap((e) => (e.event.case === "warning" ? [e.event.value.message] : []));
    expect(warnings.filter((w) => /malformed_output|rejected_request/.test(w))).toEqual([]);
    const progress = events.flatMap((e) => (e.event.case === "progress" ? [e.event.value] : []));
    expect(progress.some((p) => p.chunksDone === 2 && p.examplesGenerated + p.chunksFailed >= 2)).toBe(true);
    expect(progress.at(-1)!.completionTokens).toBeGreaterThan(0n);
    // A random model's words are no example: its questions are runs of blanks (the grammar allows any string), which
    // the quality gate drops, and the failure says so.
    expect(done.status).toBe(DatasetVersionStatus.FAILED);
    expect(done.failure!.reason).toBe("NO_EXAMPLES");
    expect(done.failure!.message).toMatch(/passed the quality checks \(2 generated; dropped: [a-z_]+ \d/);
  }, 300_000);
});
