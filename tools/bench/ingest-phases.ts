/**
 * Where an ingest run's time goes (issue 16): the ingest service started in this process as production starts it
 * (real nats-server, its own bus, the document pool's worker threads), one server-directory run of COPIES copies of
 * the AWS corpus, after a warm-up run of one copy. Prints the run's wall time beside the anchor (parse + chunk of the
 * same files in one thread of this process, no storage), the CPU seconds of this process's main thread, of its other
 * threads (document workers, GC, I/O) and of nats-server, and per phase of a document (the document store's reads
 * and writes, the worker's parse + chunk, the run's saves) how often it ran and the time spent in it summed over the
 * documents in flight (so the sums overlap; they say which waits dominate, not what adds up to the wall time); then
 * the tail (from the last document's result to the completed event at the client: the run's last writes) and the CPU
 * seconds of each thread of this process (the document worker is the busiest one besides main; the others are V8's
 * GC and compiler threads). With `node --cpu-prof` the main thread's profile shows what its CPU time is spent on
 * (on a loaded machine, samples in `writeBuffer` are mostly the thread waiting to run again after its socket write
 * woke nats-server, not CPU: compare with the CPU seconds).
 *
 * Run: node --conditions=@ragtune/source --import tsx tools/bench/ingest-phases.ts   (COPIES=10 WORKERS=1)
 */
import { readdirSync, readFileSync } from "node:fs";
import { cp, mkdir, mkdtemp, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join, relative } from "node:path";
import { IngestService } from "@ragtune/proto";
import { startTestService } from "@ragtune/rpc";
import { AWS_CORPUS_DIR, corpusMarkdownFiles, startNatsServer } from "@ragtune/testing";
import { chunkDocument, documentIdFor, loadTokenizer, parseDocument } from "@ragtune/text";
import { ingestConfigSchema } from "../../services/ingest/src/config.js";
import { DocumentPool } from "../../services/ingest/src/document-pool.js";
import { DocumentStore } from "../../services/ingest/src/document-store.js";
import { IngestRunner } from "../../services/ingest/src/ingest-runner.js";
import { RunStore } from "../../services/ingest/src/run-store.js";
import { startIngestService } from "../../services/ingest/src/server.js";
import { threadCpuSeconds } from "./proc-cpu.js";

/** CPU seconds per thread name (/proc comm) of a process: which threads beside the main one spend the time. */
function cpuByThreadName(pid: number): Map<string, number> {
  const by = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    } catch {
      continue;
    }
    const name = tid === String(pid) ? "main" : `${stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"))}/${tid}`;
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    by.set(name, (by.get(name) ?? 0) + (Number(f[11]) + Number(f[12])) / 100);
  }
  return by;
}

const COPIES = Number(process.env["COPIES"] ?? 10);
const WORKERS = process.env["WORKERS"] ?? "1";

const phases = new Map<string, { n: number; ms: number; lastEnd: number }>();
/** Times every call of `proto[name]` (an async method) under `label`. */
function timed(proto: object, name: string, label = name): void {
  const target = proto as Record<string, (...args: unknown[]) => Promise<unknown>>;
  const original = target[name]!;
  target[name] = async function (this: unknown, ...args: unknown[]) {
    const start = performance.now();
    try {
      return await original.apply(this, args);
    } finally {
      const p = phases.get(label) ?? { n: 0, ms: 0, lastEnd: 0 };
      p.n++;
      p.lastEnd = performance.now();
      p.ms += p.lastEnd - start;
      phases.set(label, p);
    }
  };
}
for (const m of ["getDocument", "readChunkSetBytes", "hasIndexed", "indexedChunks", "putChunkSet", "putEncodedChunks", "putDocument", "deleteChunks", "refreshCollection"]) {
  timed(DocumentStore.prototype, m, `store.${m}`);
}
timed(DocumentPool.prototype, "run", "worker: parse + chunk (queued included)");
timed(RunStore.prototype, "save", "run saves (in the background)");
timed(RunStore.prototype, "completeRun", "run: completeRun (the last write)");
timed(IngestRunner.prototype, "finish", "run: finish (statistics, collection counts, last write)");
timed(IngestRunner.prototype, "processItem", "document: whole (read to result)");

const load = () => loadavg().map((l) => l.toFixed(2)).join(", ");

const files = corpusMarkdownFiles(AWS_CORPUS_DIR);
const texts = files.map((f) => readFileSync(f, "utf8"));
const root = await mkdtemp(join(tmpdir(), "ragtune-ingest-phases-"));
for (let c = 0; c < COPIES; c++) {
  await mkdir(join(root, `copy-${c}`));
  await cp(AWS_CORPUS_DIR, join(root, `copy-${c}`), { recursive: true, filter: (s) => !s.endsWith("SOURCE.md") });
}

const anchorCpu = process.cpuUsage();
let start = performance.now();
const tokenizer = loadTokenizer("mistral");
for (let c = 0; c < COPIES; c++) {
  for (const [k, text] of texts.entries()) {
    const doc = parseDocument({ text, filename: `copy-${c}/${relative(AWS_CORPUS_DIR, files[k]!)}` });
    chunkDocument(doc, { tokenizer, documentId: documentIdFor("anchor", doc.filename) });
  }
}
const anchor = (performance.now() - start) / 1000;
const anchorUsed = process.cpuUsage(anchorCpu);
console.log(`anchor (parse + chunk, one thread): ${anchor.toFixed(2)} s, CPU ${((anchorUsed.user + anchorUsed.system) / 1e6).toFixed(2)} s; load average ${load()}`);

const nats = await startNatsServer();
const service = await startTestService({
  definition: { name: "ingest", schema: ingestConfigSchema, start: startIngestService },
  nats,
  env: { INGEST_ALLOWED_ROOT: root, INGEST_WORKERS: WORKERS, LOG_LEVEL: "warn" },
});
try {
  const client = service.client(IngestService);
  for (const [collection, path] of [["warm-up", "copy-0"], ["measured", "."]] as const) {
    phases.clear();
    const before = { self: threadCpuSeconds(process.pid), nats: threadCpuSeconds(nats.pid!) };
    const threadsBefore = cpuByThreadName(process.pid);
    start = performance.now();
    const { run } = await client.ingestDocuments({ collection, sources: [{ source: { case: "serverPath", value: { path } } }] });
    for await (const _ of client.watchIngestRun({ runId: run!.id })) void _;
    const end = performance.now();
    const wall = (end - start) / 1000;
    const after = { self: threadCpuSeconds(process.pid), nats: threadCpuSeconds(nats.pid!) };
    if (collection === "warm-up") continue;
    const documents = COPIES * files.length;
    console.log(
      `service, INGEST_WORKERS=${WORKERS}: ${documents} documents in ${wall.toFixed(2)} s (${(wall / anchor).toFixed(2)}× the anchor); CPU s: main thread ${(after.self.main - before.self.main).toFixed(2)}, other threads ${(after.self.other - before.self.other).toFixed(2)}, nats-server ${(after.nats.main + after.nats.other - before.nats.main - before.nats.other).toFixed(2)}; load average ${load()}`,
    );
    const threads = [...cpuByThreadName(process.pid)].map(([name, s]) => [name, s - (threadsBefore.get(name) ?? 0)] as const).filter(([, s]) => s >= 0.05).sort((a, b) => b[1] - a[1]);
    const lastDocument = phases.get("document: whole (read to result)")?.lastEnd ?? end;
    console.log(`tail: ${(end - lastDocument).toFixed(0)} ms from the last document's result to the completed event at the client`);
    console.log(`CPU s by thread name: ${threads.map(([name, s]) => `${name} ${s.toFixed(2)}`).join(", ")}`);
    console.log("| phase | calls | summed s | mean ms |");
    console.log("|---|---:|---:|---:|");
    for (const [label, p] of phases) console.log(`| ${label} | ${p.n} | ${(p.ms / 1000).toFixed(2)} | ${(p.ms / p.n).toFixed(1)} |`);
  }
} finally {
  await service.stop();
  await nats.stop();
  await rm(root, { recursive: true, force: true });
}
