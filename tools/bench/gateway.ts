/**
 * Gateway benchmark (issue 19): Ask's overhead, retrieval latency and retrieval quality, on ../shared/corpus/aws-docs.
 *
 * Contestants: ragtune (the gateway's own BM25 index), MiniSearch with the same tokenizer, fields, boosts and Okapi
 *   parameters (the library the gateway used first), and the anchor below.
 * Part 1, retrieval quality: the corpus parsed and chunked (128-token chunks, mistral tokenizer), questions written by
 *   the dataset's extractive generator from each chunk (question → its source chunk); recall@5 and MRR@10 of the
 *   gateway's retriever (libs/retrieval BM25, technical tokenizer, heading path weighted) beside the anchor, a plain
 *   LangChain-style in-memory BM25 (Okapi k1 1.2, b 0.75; lowercase \w+ tokens; text only) on the same chunks.
 * Part 2, retrieval latency alone: the retrievers over the corpus chunks copied to 10k and 100k chunks (each copy its
 *   own chunk and document IDs), one search per question (top 5). Each retriever is timed in passes of its own (after
 *   a warm-up and a forced GC, so one contestant's garbage is not collected in another's time): ragtune ROUNDS passes
 *   over every question, the anchor and MiniSearch (tens to hundreds of times slower) one pass over the first
 *   SLOW_QUERIES; p50/p99 per search of wall time and of the process's CPU time (on a shared machine the wall time
 *   also holds the time the process waited for a core). MiniSearch only at 10k (at 100k it takes minutes).
 * Part 3, Ask overhead: the ingest service and the gateway as child processes (as the dev stack starts them) on a
 *   real nats-server, ≥ 10k chunks ingested, the model endpoint a loopback HTTP server in a process of its own (as a
 *   model server is) that answers every completion instantly. Open loop at RATE requests/s for DURATION s: Ask as
 *   Connect JSON over HTTP/1.1 to the gateway, and, as the anchor, the same completion request straight to the
 *   endpoint at the same rate; ROUNDS pairs (anchor, then gateway). Overhead = the gateway's latency percentile minus
 *   the anchor's in the same pair. Before them, ROUNDS pairs of the anchor and the floor: a forwarding proxy process
 *   (node's HTTP server passing each body on to the endpoint and its answer back, no other work), what one more
 *   process and hop costs on this machine; its overhead is printed beside the gateway's. Every answer is checked
 *   (status 200; the model's text and a context chunk in an Ask's answer, the choices in a completion). A contestant
 *   that cannot keep up is given GRACE s after the last send; answers not in by then count as infinitely late
 *   (reported as unanswered), so a saturated run still ends. Beside each gateway round, the gateway's CPU time per Ask
 *   (from /proc, all its processes: one process's rate is capped at a core's worth of it), and for every contestant
 *   how late the sender fell behind its schedule (the largest lag, and how many times it fell more than STALL_MS
 *   behind: the requests due meanwhile go out at once, a burst the contestant must absorb). PROCESSES sets
 *   GATEWAY_PROCESSES (processes serving the gateway's port). GATEWAY_CPU_PROF=dir writes the gateway process's CPU
 *   profile there (tools/bench/profile-split.mjs summarises it); SERVICE_NODE_OPTIONS is the services' NODE_OPTIONS
 *   (V8 flags for the services alone, not for this process); TRACE_FILE=path writes every request's start, latency
 *   and port as JSON.
 * Every figure line ends with the machine's load average (1 min) when it was taken.
 *
 * Run: npm run bench:gateway -w @ragtune/tools
 *   (PARTS=quality,latency,ask RATE=500 DURATION=10 ROUNDS=3 GRACE=10 PROCESSES=1 QUERIES=960 SLOW_QUERIES=100 CORPUS=...)
 */
import { readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { relative } from "node:path";
import { fileURLToPath } from "node:url";
import { forkForwardingProxy, forkInstantEndpoint, LeanHttpClient } from "./lean-http.js";
import { generateExtractiveDataset, type SourceChunk } from "../../services/dataset/src/extractive-generator.js";
import { Bm25Retriever, type IndexedChunk } from "@ragtune/retrieval";
import { technicalTerms } from "@ragtune/retrieval";
import MiniSearch from "minisearch";
import { IngestRunStatus, IngestService } from "@ragtune/proto";
import { createClient } from "@ragtune/rpc";
import { chunkDocument, documentIdFor, loadTokenizer, parseDocument } from "@ragtune/text";
import { AWS_CORPUS_DIR, corpusMarkdownFiles, freePort } from "@ragtune/testing";
import { startStack } from "../src/stack.js";
import { processTreeCpuSeconds as processCpuSeconds } from "./proc-cpu.js";

const CORPUS = process.env.CORPUS ?? AWS_CORPUS_DIR;
const RATE = Number(process.env.RATE ?? 500);
const cpuMs = (u: NodeJS.CpuUsage) => (u.user + u.system) / 1000;
const DURATION = Number(process.env.DURATION ?? 10);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
/** The gateway's GATEWAY_PROCESSES (processes serving its port) in part 3. */
const PROCESSES = Number(process.env.PROCESSES ?? 1);
/** Seconds an Ask round waits for answers after its last send before it gives up on the rest. */
/** Connections the warm-up opens to the gateway (requests rotate over them; more open only when all are busy). */
const WARM_CONNECTIONS = Number(process.env.CONNECTIONS ?? 16);
/** Seconds at RATE before each measured round of a contestant, not measured. */
const WARM_SECONDS = Number(process.env.WARM ?? 2);
const GRACE = Number(process.env.GRACE ?? 10);
/**
 * A send later than this (ms) after its due time marks a stall of this process (the sender): its own garbage
 * collection, or the machine not running it; the count of such episodes per round is printed beside the round.
 */
const STALL_MS = 5;
const TRACE: [number, number, string][] | undefined = process.env.TRACE_FILE ? [] : undefined;
process.on("exit", () => { if (TRACE) writeFileSync(process.env.TRACE_FILE!, JSON.stringify(TRACE)); });
const PARTS = new Set((process.env.PARTS ?? "quality,latency,ask").split(","));
const CHUNK_SIZE = 128;
/** Questions per pass of ragtune in part 2 (default: all of them), and per pass of the slower contestants. */
const QUERIES = Number(process.env.QUERIES ?? Infinity);
const SLOW_QUERIES = Number(process.env.SLOW_QUERIES ?? 100);

setFlagsFromString("--expose-gc");
/** A full GC (between timed passes). */
const gc = runInNewContext("gc") as () => void;
const load = () => `[load ${loadavg()[0]!.toFixed(2)}]`;

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
const fmt = (ms: number) => ms.toFixed(3);

/** The anchor: a plain in-memory Okapi BM25 as LangChain's BM25Retriever does it (lowercase \w+ terms, text only). */
class PlainBm25 {
  readonly #postings = new Map<string, { doc: number; tf: number }[]>();
  readonly #lengths: number[] = [];
  readonly #ids: string[] = [];
  #total = 0;
  add(id: string, text: string): void {
    const terms = text.toLowerCase().match(/\w+/g) ?? [];
    const doc = this.#ids.length;
    this.#ids.push(id);
    this.#lengths.push(terms.length);
    this.#total += terms.length;
    const tf = new Map<string, number>();
    for (const t of terms) tf.set(t, (tf.get(t) ?? 0) + 1);
    for (const [t, n] of tf) {
      let list = this.#postings.get(t);
      if (list === undefined) this.#postings.set(t, (list = []));
      list.push({ doc, tf: n });
    }
  }
  search(query: string, k: number): string[] {
    const n = this.#ids.length;
    const avg = this.#total / n;
    const scores = new Map<number, number>();
    for (const t of new Set(query.toLowerCase().match(/\w+/g) ?? [])) {
      const list = this.#postings.get(t);
      if (list === undefined) continue;
      const idf = Math.log(1 + (n - list.length + 0.5) / (list.length + 0.5));
      for (const { doc, tf } of list) {
        const s = (idf * tf * 2.2) / (tf + 1.2 * (0.25 + (0.75 * this.#lengths[doc]!) / avg));
        scores.set(doc, (scores.get(doc) ?? 0) + s);
      }
    }
    return [...scores].sort((a, b) => b[1] - a[1]).slice(0, k).map(([doc]) => this.#ids[doc]!);
  }
}

/** MiniSearch configured as the gateway's retriever scores (same tokenizer, fields, boosts, Okapi k1 1.2, b 0.75). */
function miniSearchOf(docs: Iterable<IndexedChunk[]>): MiniSearch {
  const ms = new MiniSearch({
    fields: ["text", "headings"],
    tokenize: (t) => technicalTerms(t),
    processTerm: (t) => t,
    searchOptions: { boost: { headings: 0.5 }, bm25: { k: 1.2, b: 0.75, d: 0 }, tokenize: (t) => [...new Set(technicalTerms(t))] },
  });
  for (const list of docs) ms.addAll(list.map((c) => ({ id: c.chunkId, text: c.text, headings: c.headingPath.join(" ") })));
  return ms;
}

function corpusChunks(): IndexedChunk[] {
  const tokenizer = loadTokenizer("mistral");
  const out: IndexedChunk[] = [];
  for (const file of corpusMarkdownFiles(CORPUS)) {
    const name = relative(CORPUS, file);
    const doc = parseDocument({ filename: name, bytes: readFileSync(file) });
    const documentId = documentIdFor("bench", name);
    for (const c of chunkDocument(doc, { tokenizer, chunkSize: CHUNK_SIZE, documentId })) {
      out.push({ chunkId: c.id, documentId, headingPath: c.headingPath === "" ? [] : c.headingPath.split(" > "), text: c.text, ordinal: c.ordinal });
    }
  }
  return out;
}

function copies(chunks: readonly IndexedChunk[], target: number): Map<string, IndexedChunk[]> {
  const byDoc = new Map<string, IndexedChunk[]>();
  for (let copy = 0, n = 0; n < target; copy++) {
    for (const c of chunks) {
      if (n >= target) break;
      const documentId = `${c.documentId}-${copy}`;
      let list = byDoc.get(documentId);
      if (list === undefined) byDoc.set(documentId, (list = []));
      list.push({ ...c, chunkId: `${c.chunkId}-${copy}`, documentId });
      n++;
    }
  }
  return byDoc;
}

function time(fn: () => void): number {
  const t = performance.now();
  fn();
  return performance.now() - t;
}


/** One timed pass of searches: wall and CPU milliseconds per search, sorted. */
function pass(search: (q: string) => unknown, questions: readonly string[]): { wall: number[]; cpu: number[] } {
  for (let i = 0; i < 50; i++) search(questions[i % questions.length]!); // warm-up
  gc();
  const wall: number[] = [];
  const cpu: number[] = [];
  for (const q of questions) {
    const c = process.cpuUsage();
    const t = performance.now();
    search(q);
    wall.push(performance.now() - t);
    const d = process.cpuUsage(c);
    cpu.push((d.user + d.system) / 1000);
  }
  wall.sort((x, y) => x - y);
  cpu.sort((x, y) => x - y);
  return { wall, cpu };
}

async function main(): Promise<void> {
  const chunks = corpusChunks();
  const questions = generateExtractiveDataset(chunks.map((c): SourceChunk => ({ id: c.chunkId, documentId: c.documentId, headingPath: c.headingPath, text: c.text }))).map((e) => ({ question: e.question, chunkId: e.chunkId }));
  console.log(`corpus: ${chunks.length} chunks of ≤ ${CHUNK_SIZE} tokens; ${questions.length} questions from the dataset's extractive generator\n`);

  // Part 1
  if (PARTS.has("quality")) {
    const ours = new Bm25Retriever();
    const byDoc = new Map<string, IndexedChunk[]>();
    for (const c of chunks) byDoc.set(c.documentId, [...(byDoc.get(c.documentId) ?? []), c]);
    for (const [d, list] of byDoc) ours.putDocument(d, list);
    const anchor = new PlainBm25();
    for (const c of chunks) anchor.add(c.chunkId, c.text);
    const quality = (search: (q: string) => string[]) => {
      let hit5 = 0;
      let rr = 0;
      for (const q of questions) {
        const ranked = search(q.question);
        const rank = ranked.indexOf(q.chunkId);
        if (rank >= 0 && rank < 5) hit5++;
        if (rank >= 0) rr += 1 / (rank + 1);
      }
      return { recall5: hit5 / questions.length, mrr: rr / questions.length };
    };
    const qOurs = quality((q) => ours.search(q, 10).map((h) => h.chunk.chunkId));
    const mini = miniSearchOf(byDoc.values());
    const qMini = quality((q) => mini.search(q).slice(0, 10).map((r) => r.id as string));
    const qAnchor = quality((q) => anchor.search(q, 10));
    console.log("Part 1 — retrieval quality (question → its source chunk)");
    console.log(`  ragtune BM25 (own index, technical tokenizer): recall@5 ${qOurs.recall5.toFixed(3)}  MRR@10 ${qOurs.mrr.toFixed(3)}`);
    console.log(`  MiniSearch, same tokenizer and scoring:        recall@5 ${qMini.recall5.toFixed(3)}  MRR@10 ${qMini.mrr.toFixed(3)}`);
    console.log(`  anchor plain BM25 (LangChain-style):           recall@5 ${qAnchor.recall5.toFixed(3)}  MRR@10 ${qAnchor.mrr.toFixed(3)}\n`);
  }

  // Part 2
  if (PARTS.has("latency")) {
    const all = questions.slice(0, QUERIES).map((q) => q.question);
    console.log(`Part 2 — retrieval latency alone (top 5): ragtune ${ROUNDS} passes of ${all.length} searches; the anchor and MiniSearch, many times slower, one pass of ${Math.min(all.length, SLOW_QUERIES)}`);
    for (const size of [10_000, 100_000]) {
      const docs = copies(chunks, size);
      const r = new Bm25Retriever();
      const a = new PlainBm25();
      const buildOurs = time(() => {
        for (const [d, list] of docs) r.putDocument(d, list);
      });
      const buildAnchor = time(() => {
        for (const list of docs.values()) for (const c of list) a.add(c.chunkId, c.text);
      });
      let m: MiniSearch | undefined;
      const buildMini = size > 10_000 ? undefined : time(() => {
        m = miniSearchOf(docs.values());
      });
      const slow = all.slice(0, SLOW_QUERIES);
      const contestants: { label: string; search: (q: string) => unknown; passes: number; questions: string[] }[] = [
        { label: "ragtune", search: (q) => r.search(q, 5), passes: ROUNDS, questions: all },
        ...(m === undefined ? [] : [{ label: "MiniSearch", search: (q: string) => m!.search(q).slice(0, 5), passes: 1, questions: slow }]),
        { label: "anchor", search: (q) => a.search(q, 5), passes: 1, questions: slow },
      ];
      console.log(`  ${size} chunks (built in: ragtune ${buildOurs.toFixed(0)} ms, ${buildMini === undefined ? "" : `MiniSearch ${buildMini.toFixed(0)} ms, `}anchor ${buildAnchor.toFixed(0)} ms)`);
      const summary: { label: string; wall50: number; wall99: number; cpu50: number; cpu99: number }[] = [];
      for (const c of contestants) {
        const runs: { wall: number[]; cpu: number[] }[] = [];
        for (let round = 0; round < c.passes; round++) {
          const t = pass(c.search, c.questions);
          runs.push(t);
          console.log(`    pass ${round + 1} ${c.label.padEnd(10)} wall p50 ${fmt(pct(t.wall, 50))} ms  p99 ${fmt(pct(t.wall, 99))} ms   cpu p50 ${fmt(pct(t.cpu, 50))} ms  p99 ${fmt(pct(t.cpu, 99))} ms  ${load()}`);
        }
        summary.push({
          label: c.label,
          wall50: median(runs.map((t) => pct(t.wall, 50))),
          wall99: median(runs.map((t) => pct(t.wall, 99))),
          cpu50: median(runs.map((t) => pct(t.cpu, 50))),
          cpu99: median(runs.map((t) => pct(t.cpu, 99))),
        });
      }
      const anchor = summary.find((x) => x.label === "anchor")!;
      for (const x of summary) {
        console.log(
          `    ${x.label.padEnd(10)} (median of passes) wall p50 ${fmt(x.wall50)} ms  p99 ${fmt(x.wall99)} ms   cpu p50 ${fmt(x.cpu50)} ms  p99 ${fmt(x.cpu99)} ms   cpu p99 / anchor ${(x.cpu99 / anchor.cpu99).toFixed(3)}`,
        );
      }
    }
    console.log("");
  }

  // Part 3
  if (PARTS.has("ask")) await askOverhead(chunks, questions);
}

/** One open-loop run: latencies sorted, the sender's largest lag and stall episodes, answers not in, the load at its end. */
interface Round {
  ms: number[];
  maxLag: number;
  stalls: number;
  unanswered: number;
  load: string;
}

async function askOverhead(chunks: readonly IndexedChunk[], questions: readonly { question: string }[]): Promise<void> {
  const endpoint = await forkInstantEndpoint({ id: "c", object: "text_completion", model: "base", choices: [{ index: 0, text: " The answer.", finish_reason: "stop" }], usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } });
  const endpointUrl = endpoint.url;
  const floor = await forkForwardingProxy(endpointUrl, "/v1/completions");
  const portBase = await freePort();
  const profileDir = process.env.GATEWAY_CPU_PROF;
  const stack = await startStack({
    only: ["ingest", "gateway"],
    portBase,
    env: {
      // The stack runs services at LOG_LEVEL info at least (readiness is an info line): every Ask writes its "rpc
      // finished" line, as a gateway at the default level does, and that line is part of the measured work.
      GATEWAY_AUTH: "none",
      GATEWAY_INGEST_URL: `http://127.0.0.1:${portBase}`,
      LLM_BASE_URL: `${endpointUrl}/v1`,
      LLM_MODEL: "base",
      LLM_CONCURRENCY: "1024",
      GATEWAY_PROCESSES: String(PROCESSES),
      ...(process.env.SERVICE_NODE_OPTIONS !== undefined ? { NODE_OPTIONS: process.env.SERVICE_NODE_OPTIONS } : {}),
      ...(profileDir !== undefined
        ? { NODE_OPTIONS: `${process.env.SERVICE_NODE_OPTIONS ?? process.env.NODE_OPTIONS ?? ""} --import ${fileURLToPath(new URL("./cpu-profile.mjs", import.meta.url))}`.trim(), CPU_PROFILE_DIR: profileDir, CPU_PROFILE_MATCH: "services/gateway/" }
        : {}),
    },
  });
  try {
    const ingest = createClient(IngestService, { baseUrl: stack.services.ingest.url, protocol: "grpc" });
    const files = corpusMarkdownFiles(CORPUS);
    const ingestCopy = async (copy: number): Promise<void> => {
      const sources = files.map((f) => ({ source: { case: "inline" as const, value: { filename: `copy${copy}/${relative(CORPUS, f)}`, mediaType: "", content: readFileSync(f) } } }));
      const { run } = await ingest.ingestDocuments({ collection: "bench", sources, chunking: { chunkSizeTokens: CHUNK_SIZE } });
      for await (const _ of ingest.watchIngestRun({ runId: run!.id })) void _;
      const done = (await ingest.getIngestRun({ runId: run!.id })).run!;
      if (done.status !== IngestRunStatus.SUCCEEDED) throw new Error(`ingest of copy ${copy} ended ${IngestRunStatus[done.status]}`);
    };
    const ingestStarted = performance.now();
    // The copies that make 10k chunks as this process chunks them, as concurrent runs; more if ingest chunked fewer.
    let copies = Math.ceil(10_000 / chunks.length);
    await Promise.all(Array.from({ length: copies }, (_, copy) => ingestCopy(copy)));
    const chunkCount = async () => (await ingest.listCollections({})).collections.find((c) => c.name === "bench")!.chunkCount;
    let total = await chunkCount();
    while (total < 10_000) {
      await ingestCopy(copies++);
      total = await chunkCount();
    }
    console.log(`Part 3 — Ask overhead, GATEWAY_PROCESSES=${PROCESSES}: ${total} chunks ingested in ${((performance.now() - ingestStarted) / 1000).toFixed(1)} s; open loop at ${RATE} requests/s for ${DURATION} s each, ${ROUNDS} rounds (anchor, then gateway)`);
    // The sender: raw keep-alive connections (lean-http.ts), one pool per target, so the bench takes little of the CPU.
    const clients = new Map<string, LeanHttpClient>();
    const clientOf = (url: URL) => {
      let c = clients.get(url.host);
      if (c === undefined) clients.set(url.host, (c = new LeanHttpClient(url.hostname, Number(url.port))));
      return c;
    };
    /** Requests not answered yet (a round that gives up on them closes their connections). */
    let inFlight = 0;
    /**
     * POSTs `body` to `url` and checks the answer: status 200 and every `expected` piece of JSON in its bytes (the
     * answers are compact JSON; searching the bytes spares this process a parse of every answer, whose garbage
     * collection would hold the sender and make it send in bursts).
     */
    const post = async (url: string, body: string, expected: readonly Buffer[]): Promise<number> => {
      const start = performance.now();
      const u = new URL(url);
      inFlight++;
      let res;
      try {
        res = await clientOf(u).post(u.pathname, body);
      } finally {
        inFlight--;
      }
      const ms = performance.now() - start;
      if (TRACE !== undefined) TRACE.push([performance.timeOrigin + start, ms, u.port]);
      if (res.status !== 200 || expected.some((piece) => !res.body.includes(piece))) {
        throw new Error(`bad answer ${res.status}: ${res.body.toString("utf8", 0, 300)}`);
      }
      return ms;
    };
    /**
     * Sends at RATE for DURATION (each request at its due time, whatever is in flight); latencies sorted, how late the
     * sender fell, and how many answers had not come GRACE s after the last send (a saturated contestant: those are
     * dropped and count as infinitely late, so a round ends in bounded time).
     */
    const openLoop = async (send: (i: number) => Promise<number>, seconds = DURATION): Promise<Round> => {
      const n = RATE * seconds;
      const started = performance.now();
      const pending: Promise<number>[] = [];
      let maxLag = 0;
      let stalls = 0;
      let lagging = false;
      for (let i = 0; i < n; i++) {
        const due = started + (i * 1000) / RATE;
        const wait = due - performance.now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        const lag = performance.now() - due;
        maxLag = Math.max(maxLag, lag);
        if (lag > STALL_MS && !lagging) stalls++;
        lagging = lag > STALL_MS;
        pending.push(send(i));
      }
      let unanswered = 0;
      let timer: NodeJS.Timeout | undefined;
      const settled = Promise.allSettled(pending);
      const gaveUp = await Promise.race([settled.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), GRACE * 1000)))]);
      clearTimeout(timer);
      if (gaveUp) {
        unanswered = inFlight;
        for (const c of clients.values()) c.destroy(); // their pending requests fail with "connection closed"
        clients.clear();
      }
      const ms: number[] = [];
      for (const r of await settled) {
        if (r.status === "fulfilled") ms.push(r.value);
        else if (gaveUp && r.reason instanceof Error && r.reason.message === "connection closed") ms.push(Infinity);
        else throw r.reason;
      }
      return { ms: ms.sort((a, b) => a - b), maxLag, stalls, unanswered, load: load() };
    };
    /** A contestant at RATE for WARM_SECONDS, not measured, then a forced GC: what each measured round starts with. */
    const warm = async (send: (i: number) => Promise<number>): Promise<void> => {
      await openLoop(send, WARM_SECONDS);
      gc();
    };
    const gatewayPid = stack.services.gateway.process.pid!;
    const askUrl = `${stack.services.gateway.url}/ragtune.gateway.v1.GatewayService/Ask`;
    /** A good Ask answer: the model's text, and retrieved context (a chunk ID in it); a good completion: its choices. */
    const GOOD_ASK = [Buffer.from('"answer":"The answer."'), Buffer.from('"context":[{"chunkId":"')];
    const GOOD_COMPLETION = [Buffer.from('"choices":[{')];
    const askBody = (i: number) => JSON.stringify({ collection: "bench", question: questions[i % questions.length]!.question });
    const prompt = "[INST] " + chunks.slice(0, 4).map((c) => c.text).join("\n\n") + "\n\nQuestion: q [/INST]";
    const completionBody = JSON.stringify({ model: "base", prompt, temperature: 0, max_tokens: 256 });
    /** A measured round's latency percentiles, the load when it ended, how far the sender fell behind, what went unanswered. */
    const figures = (r: Round) =>
      `p50 ${fmt(pct(r.ms, 50))} ms p99 ${fmt(pct(r.ms, 99))} ms ${r.load} (sender lag ≤ ${fmt(r.maxLag)} ms, ${r.stalls} times > ${STALL_MS} ms` +
      `${r.unanswered === 0 ? "" : `; ${r.unanswered} unanswered ${GRACE} s after the last send: saturated`})`;
    type Overhead = { p50: number; p99: number };
    /** A contestant's latency percentiles minus the anchor's (both sorted). */
    const overheadOf = (contestant: number[], anchor: number[]): Overhead => ({ p50: pct(contestant, 50) - pct(anchor, 50), p99: pct(contestant, 99) - pct(anchor, 99) });
    const medians = (os: Overhead[]) => `p50 ${fmt(median(os.map((o) => o.p50)))} ms, p99 ${fmt(median(os.map((o) => o.p99)))} ms`;
    const overheads: Overhead[] = [];
    const sendDirect = () => post(`${endpointUrl}/v1/completions`, completionBody, GOOD_COMPLETION);
    const sendAsk = (i: number) => post(askUrl, askBody(i), GOOD_ASK);
    const sendViaFloor = () => post(`${floor.url}/v1/completions`, completionBody, GOOD_COMPLETION);
    // The floor first, in pairs of its own (anchor, then the proxy), before the gateway is warmed: between the
    // gateway's rounds it would make the gateway idle twice as long, and after ~20 s idle V8 shrinks the gateway's heap
    // (its memory reducer), which then grows back under load in the measured seconds (hundreds of ms of page faults
    // here).
    const floorOverheads: Overhead[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      await warm(sendDirect);
      const direct = await openLoop(sendDirect);
      await warm(sendViaFloor);
      const viaFloor = await openLoop(sendViaFloor);
      const f = overheadOf(viaFloor.ms, direct.ms);
      floorOverheads.push(f);
      console.log(
        `  floor round ${round + 1}: anchor ${figures(direct)}; floor (forwarding proxy) ${figures(viaFloor)} → its overhead p50 ${fmt(f.p50)} ms, p99 ${fmt(f.p99)} ms`,
      );
    }
    console.log(`  floor median of ${ROUNDS}: overhead ${medians(floorOverheads)}`);
    // Warm-up: loads the collection's index and opens the connections, WARM_CONNECTIONS at once (connections go to the gateway's
    // processes in turn, so each process loads its index here, not in the first round), and asks every question
    // twice (the JIT and each term's cached contributions are made here, not in the first round).
    await Promise.all(Array.from({ length: WARM_CONNECTIONS }, async (_, lane) => {
      for (let i = lane; i < 2 * questions.length; i += WARM_CONNECTIONS) await post(askUrl, askBody(i), GOOD_ASK);
    }));
    for (let round = 0; round < ROUNDS; round++) {
      // Each contestant is measured at its steady state: RATE for WARM seconds first, not measured (the gateway idles
      // while the anchor runs, and V8 uses idle time to shrink its heaps and flush code).
      await warm(sendDirect);
      const ownDirect = process.cpuUsage();
      const direct = await openLoop(sendDirect);
      const ownPerDirect = cpuMs(process.cpuUsage(ownDirect)) / direct.ms.length;
      await warm(sendAsk);
      const cpuBefore = processCpuSeconds(gatewayPid) * 1000;
      const ownAsk = process.cpuUsage();
      const gateway = await openLoop(sendAsk);
      const ownPerAsk = cpuMs(process.cpuUsage(ownAsk)) / gateway.ms.length;
      // per answered Ask (an unanswered one may not have been worked on yet)
      const cpuPerAsk = (processCpuSeconds(gatewayPid) * 1000 - cpuBefore) / Math.max(1, gateway.ms.length - gateway.unanswered);
      const o = overheadOf(gateway.ms, direct.ms);
      overheads.push(o);
      console.log(
        `  round ${round + 1}: anchor (endpoint direct) ${figures(direct)}; gateway Ask ${figures(gateway)} → overhead p50 ${fmt(o.p50)} ms, p99 ${fmt(o.p99)} ms; gateway CPU (all its processes) ${fmt(cpuPerAsk)} ms per Ask; this process (the sender) ${fmt(ownPerDirect)} ms per direct request, ${fmt(ownPerAsk)} ms per Ask`,
      );
    }
    console.log(`  median of ${ROUNDS}: overhead ${medians(overheads)} (the floor's: ${medians(floorOverheads)})`);
    for (const c of clients.values()) c.destroy();
  } finally {
    await stack.stop();
    floor.close();
    endpoint.close();
  }
}

await main();
