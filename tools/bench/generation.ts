/**
 * Dataset generation benchmark (issue 17), end to end: a real nats-server, the real ingest service and dataset
 * service replicas, and a loopback OpenAI-compatible endpoint (tools/bench/loopback-endpoint.ts, its own process) with
 * a fixed latency that answers each chunk's guided-JSON request with pairs taken from the chunk. The same collection
 * of synthetic documents (one chunk per section, seeded) is built with `settings.model` in every condition; the
 * generation goes through the work queue (batches of DATASET_GENERATION_BATCH_CHUNKS) like any build.
 *
 *   theoretical = concurrency / latency (every slot always busy with a request that succeeds first time)
 *   share       = chunks generated per second of generation time / theoretical, where generation time runs from the
 *                 version's GENERATING event to its last progress event with every chunk done (the service's own
 *                 event times)
 *   success     = chunks whose request eventually succeeded / chunks (the rest are reported per chunk)
 *
 * The build's max_concurrency (MAX_CONCURRENCY, default 4 × the concurrency) is not what binds: each replica's
 * LLM_CONCURRENCY (the concurrency, halved with two replicas) caps the requests on the wire, which the endpoint checks,
 * and a replica holds at most twice its LLM_CONCURRENCY in chunks; the rest wait in the queue, so a batch whose last
 * chunk is being retried does not keep fresh batches out.
 *
 * Conditions: no faults (the anchor), the floor (the same chunks through the generator on one LLM client, no queue,
 * store or events: what this machine allows at the moment), 5% faults after the full latency (and the floor with the
 * same faults), 5% faults at once (same seed, same draws; and the floor with them), the anchor's load shared by two
 * replicas with half the concurrency each, and the anchor, the floor, the late faults and the faults at once again on
 * LARGE_DOCS documents (the steady state, with the fixed startup and last wave weighing less; a build of a few thousand
 * chunks is an ordinary one).
 *
 * "At once" is what a server that rejects load sends: the 500, the 429 (`retry-after-ms: 100`) and the dropped
 * connection come back at once, without the latency. Malformed JSON still takes the full latency in that mode: it is a
 * generated body, so the server spent a generation on it (loopback-endpoint.ts).
 *
 * The conditions run in turn, ROUNDS times (interleaved, so a change in the machine's load hits them alike), after an
 * unmeasured warm-up build of a tenth of the documents; each row is the median, the ratios to the anchor and the floor
 * (of the same size) are taken within a round. The endpoint's fault draws are seeded: the same for every condition of a
 * round, another placement in each round (seed 1000 + round − 1). Where the last waves' faults fall decides much of a
 * 1000-chunk build's end: with seed 1000, request 979 of 1055 is malformed (its retry needs another full latency) and
 * request 1048, in the last wave, is a 429 (its retry waits the 100 ms asked for, then the latency).
 *
 * The wire bound: every request that takes the full latency (a good answer, and a fault after the latency) holds one
 * of the CONCURRENCY slots for LATENCY_MS, so the requests need at least ⌈full-latency requests / CONCURRENCY⌉ waves:
 * share ≤ chunks / (waves × CONCURRENCY) (1000 chunks without faults: 32 waves, 97.7%). Without the rounding up of the
 * last wave (very many chunks) the bound is chunks / full-latency requests. Neither counts a retry's wait for its
 * failed attempt, so with late faults the last wave ends later still. The bench checks that each version has 3 examples per
 * succeeded chunk before the quality gate, answers copied from their own chunk, and that the endpoint never saw more
 * requests at once than the concurrency. Per run it prints where the time went (phasesOf, from the endpoint's trace of
 * every request) and the load average.
 *
 * Run: node --conditions=@ragtune/source --import tsx tools/bench/generation.ts
 *      (DOCS=100 SECTIONS=10 CONCURRENCY=32 LATENCY_MS=200 FAULT_RATE=0.05 BATCH=8 MAX_CONCURRENCY=128 ROUNDS=1
 *      LARGE_DOCS=500 ONLY=faults,client-faults,at-once,client-at-once,replicas,large WORKERS=<the replicas'
 *      DATASET_GENERATION_WORKERS; auto when unset>
 *      to override)
 */
import os from "node:os";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { DatasetService, DatasetVersionStatus, type DatasetVersionEvent, IngestRunStatus, IngestService } from "@ragtune/proto";
import { startTestService, type TestService } from "@ragtune/rpc";
import { seededRandom, startNatsServer } from "@ragtune/testing";
import { createLlmClient } from "@ragtune/llm";
import { datasetConfigSchema } from "../../services/dataset/src/config.js";
import type { SourceChunk } from "../../services/dataset/src/extractive-generator.js";
import { generateLlmDataset } from "../../services/dataset/src/llm-generator.js";
import { startDatasetService } from "../../services/dataset/src/server.js";
import { ingestConfigSchema } from "../../services/ingest/src/config.js";
import { startIngestService } from "../../services/ingest/src/server.js";
import { type EndpointConfig, type EndpointStats, fullLatencyRequests, startEndpoint, statsSince, type TracedRequest } from "./loopback-endpoint.js";

const DOCS = Number(process.env["DOCS"] ?? 100);
const SECTIONS = Number(process.env["SECTIONS"] ?? 10);
const CONCURRENCY = Number(process.env["CONCURRENCY"] ?? 32);
const LATENCY_MS = Number(process.env["LATENCY_MS"] ?? 200);
const FAULT_RATE = Number(process.env["FAULT_RATE"] ?? 0.05);
const BATCH = Number(process.env["BATCH"] ?? 8);
const MAX_CONCURRENCY = Number(process.env["MAX_CONCURRENCY"] ?? 4 * CONCURRENCY);
/** Rounds of the conditions, interleaved (anchor, faults, …, anchor, faults, …): each row is their median. */
const ROUNDS = Number(process.env["ROUNDS"] ?? 1);
/**
 * The anchor, the client-alone floor and only these conditions (comma-separated ids: faults, client-faults, at-once,
 * client-at-once, replicas, large; all when unset). An id names the condition at both sizes (at-once: also its
 * LARGE_DOCS row), and the large anchor and floor come along with any large row.
 */
const ONLY = (process.env["ONLY"] ?? "").split(",").filter((w) => w !== "");
/** Documents of the larger builds (the anchor, the floor and the late faults again at LARGE_DOCS × SECTIONS chunks); 0: none. */
const LARGE_DOCS = Number(process.env["LARGE_DOCS"] ?? 500);
const MODEL = "bench-writer";

const WORDS = (
  "ledger account invoice payment balance entry credit debit report quarter audit archive supplier currency branch " +
  "office approval officer record register policy rule period year month schedule queue retry storage vault limit"
).split(" ");

/** Synthetic Markdown: DOCS documents of SECTIONS sections, three 10–16-word sentences each (one chunk per section). */
function documents(docs = DOCS): [string, Uint8Array][] {
  const random = seededRandom(7);
  const word = () => WORDS[Math.floor(random() * WORDS.length)]!;
  const sentence = () => {
    const n = 10 + Math.floor(random() * 7);
    const s = Array.from({ length: n }, word).join(" ");
    return `${s[0]!.toUpperCase()}${s.slice(1)}.`;
  };
  return Array.from({ length: docs }, (_, d) => {
    const sections = Array.from({ length: SECTIONS }, (_, s) => `## Section ${d}.${s}\n\n${sentence()} ${sentence()} ${sentence()}\n`);
    return [`doc-${String(d).padStart(4, "0")}.md`, Buffer.from(`# Document ${d}\n\n${sections.join("\n")}`, "utf8")];
  });
}

interface Condition {
  /** For ONLY: anchor, client, faults, client-faults, at-once, client-at-once, replicas; large (the -large ones). */
  id: string;
  label: string;
  faultRate: number;
  faultAt: EndpointConfig["faultAt"];
  /** Dataset replicas sharing the build; 0: no service, generateLlmDataset on one LLM client (the floor). */
  replicas: number;
  /** Documents of SECTIONS sections (chunks: docs × SECTIONS). */
  docs: number;
  /** The anchor and the floor its ratios are taken against (same size). */
  anchor: string;
  floor: string;
}

const faults = `${(FAULT_RATE * 100).toFixed(1)}% faults`;
const base = { docs: DOCS, anchor: "anchor", floor: "client" };
const large = { docs: LARGE_DOCS, anchor: "anchor-large", floor: "client-large" };
const CONDITIONS = ([
  { id: "anchor", label: "no faults (anchor)", faultRate: 0, faultAt: "latency", replicas: 1, ...base },
  { id: "client", label: "no faults, the generator on the LLM client alone (floor)", faultRate: 0, faultAt: "latency", replicas: 0, ...base },
  { id: "faults", label: `${faults} (after the full latency)`, faultRate: FAULT_RATE, faultAt: "latency", replicas: 1, ...base },
  { id: "client-faults", label: `${faults} (after the full latency), the generator on the LLM client alone`, faultRate: FAULT_RATE, faultAt: "latency", replicas: 0, ...base },
  { id: "at-once", label: `${faults} at once (malformed after the latency)`, faultRate: FAULT_RATE, faultAt: "immediate", replicas: 1, ...base },
  { id: "client-at-once", label: `${faults} at once, the generator on the LLM client alone`, faultRate: FAULT_RATE, faultAt: "immediate", replicas: 0, ...base },
  { id: "replicas", label: "no faults, 2 replicas × half the concurrency", faultRate: 0, faultAt: "latency", replicas: 2, ...base },
  ...(LARGE_DOCS > 0
    ? [
        { id: "anchor-large", label: `no faults (anchor), ${LARGE_DOCS * SECTIONS} chunks`, faultRate: 0, faultAt: "latency" as const, replicas: 1, ...large },
        { id: "client-large", label: `no faults, the LLM client alone (floor), ${LARGE_DOCS * SECTIONS} chunks`, faultRate: 0, faultAt: "latency" as const, replicas: 0, ...large },
        { id: "faults-large", label: `${faults} (after the full latency), ${LARGE_DOCS * SECTIONS} chunks`, faultRate: FAULT_RATE, faultAt: "latency" as const, replicas: 1, ...large },
        { id: "at-once-large", label: `${faults} at once (malformed after the latency), ${LARGE_DOCS * SECTIONS} chunks`, faultRate: FAULT_RATE, faultAt: "immediate" as const, replicas: 1, ...large },
      ]
    : []),
] satisfies Condition[] as Condition[]).filter((c, _, all) => {
  // ONLY names conditions by their id at either size ("at-once" is also "at-once-large"; "large": every large one),
  // and a condition brings the anchor and the floor of its size along.
  const named = (x: Condition) => ONLY.length === 0 || ONLY.includes(x.id) || ONLY.includes(x.id.replace(/-large$/, "")) || (x.id.endsWith("-large") && ONLY.includes("large"));
  const isBase = (x: Condition) => x.id === x.anchor || x.id === x.floor;
  return named(c) || (isBase(c) && all.some((x) => named(x) && x.docs === c.docs && !isBase(x))) || c.id === "anchor" || c.id === "client";
});

interface Result {
  condition: Condition;
  chunks: number;
  generationMs: number;
  succeededChunks: number;
  examplesGenerated: number;
  retries: number;
  endpoint: EndpointStats;
  correct: boolean;
  phases: Phases;
  /** Load average (1 min) when the run started and ended. */
  load: [number, number];
  /** CPU ms of this process during the generation time (services and bench; not the endpoint or nats-server). */
  cpuMs: number;
}

/**
 * Where the generation time went, from the endpoint's trace (its wall clock; same host as the service's event times):
 *   startup  the version's GENERATING event → the first request on the wire (chunks read from ingest, batches queued,
 *            the first batch taken)
 *   fill     the first request → CONCURRENCY requests in flight for the first time
 *   steady   → the last request's arrival; `steadyUse` is the mean share of the CONCURRENCY slots busy in it
 *   drain    the last request's arrival → its close (at least one latency: the last slot's own request)
 *   tail     the last close → the last progress event (outcome stored, read back by the coordinator, progress written)
 *   ideal    ⌈full-latency requests / CONCURRENCY⌉ × latency: the shortest wire time these requests allow
 */
interface Phases {
  startupMs: number;
  fillMs: number;
  steadyMs: number;
  steadyUse: number;
  drainMs: number;
  tailMs: number;
  idealMs: number;
}

/** TRACE_TAIL=n: print the last n requests of each run (arrival after the start, time held, fault), to see the end. */
const TRACE_TAIL = Number(process.env["TRACE_TAIL"] ?? 0);

function phasesOf(trace: TracedRequest[], startedMs: number, endedMs: number, fullLatency: number): Phases {
  if (TRACE_TAIL > 0) {
    const tail = [...trace].sort((a, b) => a.arrivedMs - b.arrivedMs).slice(-TRACE_TAIL);
    console.log(`  last ${tail.length} requests (arrived ms after the start +held ms fault): ${tail.map((t) => `${(t.arrivedMs - startedMs).toFixed(0)}+${(t.closedMs - t.arrivedMs).toFixed(0)}${t.fault ? `:${t.fault}` : ""}`).join(" ")}`);
  }
  const firstArrival = Math.min(...trace.map((t) => t.arrivedMs));
  const lastArrival = Math.max(...trace.map((t) => t.arrivedMs));
  const lastClose = Math.max(...trace.map((t) => t.closedMs));
  // The in-flight count over time: +1 at each arrival, −1 at each close.
  const steps = trace.flatMap((t) => [{ at: t.arrivedMs, d: 1 }, { at: t.closedMs, d: -1 }]).sort((a, b) => a.at - b.at || a.d - b.d);
  let inFlight = 0;
  let full = lastArrival;
  let busy = 0; // slot-ms between `full` and the last arrival
  let prev = 0;
  for (const s of steps) {
    if (full !== lastArrival && prev < lastArrival) busy += inFlight * (Math.min(s.at, lastArrival) - Math.max(prev, full));
    inFlight += s.d;
    if (inFlight >= CONCURRENCY && full === lastArrival && s.at < lastArrival) full = s.at;
    prev = s.at;
  }
  const steadyMs = lastArrival - full;
  return {
    startupMs: firstArrival - startedMs,
    fillMs: full - firstArrival,
    steadyMs,
    steadyUse: steadyMs > 0 ? busy / (CONCURRENCY * steadyMs) : 1,
    drainMs: lastClose - lastArrival,
    tailMs: endedMs - lastClose,
    idealMs: Math.ceil(fullLatency / CONCURRENCY) * LATENCY_MS,
  };
}

/**
 * CPU time of this process (the ingest and dataset services run in it; the endpoint and nats-server do not) over wall
 * time, sampled every 20 ms: the CPU a run spent between two wall-clock times, which the machine's load does not
 * inflate the way it inflates the wall time.
 */
const cpuSamples: { wallMs: number; cpuUs: number }[] = [];
const sampleCpu = () => {
  const u = process.cpuUsage();
  cpuSamples.push({ wallMs: performance.timeOrigin + performance.now(), cpuUs: u.user + u.system });
};
setInterval(sampleCpu, 20).unref();
function cpuMsBetween(fromMs: number, toMs: number): number {
  sampleCpu();
  const at = (t: number) => {
    // The last sample at or before t (samples are in time order).
    let best = cpuSamples[0]!;
    for (const s of cpuSamples) if (s.wallMs <= t) best = s;
    return best.cpuUs;
  };
  return (at(toMs) - at(fromMs)) / 1000;
}

function loadAverage(): number {
  return os.loadavg()[0]!;
}

/**
 * The floor: the same chunks through generateLlmDataset on one LLM client (LLM_CONCURRENCY = CONCURRENCY, the build's
 * max_concurrency), in this process with no queue, store or events; time from the call to its return.
 */
async function clientAlone(
  condition: Condition,
  chunks: SourceChunk[],
  chunkText: Map<string, string>,
  endpoint: Awaited<ReturnType<typeof startEndpoint>>,
  before: EndpointStats,
  loadBefore: number,
): Promise<Result> {
  const llm = createLlmClient({ baseUrl: endpoint.url, concurrency: CONCURRENCY, timeoutMs: 10_000 });
  try {
    const started = performance.timeOrigin + performance.now();
    const out = await generateLlmDataset(chunks, { model: MODEL, questionsPerChunk: 3, temperature: 0.7, seed: 42, maxConcurrency: MAX_CONCURRENCY }, { llm });
    const ended = performance.timeOrigin + performance.now();
    const endpointStats = statsSince(await endpoint.stats(), before);
    const trace = await endpoint.trace();
    const succeededChunks = chunks.length - new Set(out.failures.map((f) => f.chunkId)).size;
    const correct = out.examples.length === 3 * succeededChunks && out.examples.every((e) => chunkText.get(e.chunkId)?.includes(e.answer));
    return {
      condition,
      chunks: chunks.length,
      phases: phasesOf(trace, started, ended, fullLatencyRequests(endpointStats, condition.faultAt)),
      cpuMs: cpuMsBetween(started, ended),
      load: [loadBefore, loadAverage()],
      generationMs: ended - started,
      succeededChunks,
      examplesGenerated: out.examples.length,
      retries: out.counts.llmRetries,
      endpoint: endpointStats,
      correct,
    };
  } finally {
    llm.close();
  }
}

async function run(condition: Condition, seed: number, docs = condition.docs): Promise<Result> {
  const loadBefore = loadAverage();
  const nats = await startNatsServer();
  const endpoint = await startEndpoint({ latencyMs: LATENCY_MS, faultRate: condition.faultRate, faultAt: condition.faultAt, seed, answer: "qa-pairs" });
  const stops: (() => Promise<void>)[] = [];
  const replicas: TestService<ReturnType<typeof datasetConfigSchema.parse>>[] = [];
  try {
    const ingest = await startTestService({ definition: { name: "ingest", schema: ingestConfigSchema, start: startIngestService }, nats });
    stops.push(() => ingest.stop());
    const perReplica = Math.floor(CONCURRENCY / Math.max(1, condition.replicas));
    for (let r = 0; r < condition.replicas; r++) {
      const dataset = await startTestService({
        definition: { name: "dataset", schema: datasetConfigSchema, start: startDatasetService },
        nats,
        env: {
          DATASET_INGEST_URL: ingest.url,
          LLM_BASE_URL: endpoint.url,
          LLM_CONCURRENCY: String(perReplica),
          LLM_TIMEOUT: "10s",
          DATASET_GENERATION_BATCH_CHUNKS: String(BATCH),
          // WORKERS: the replicas' DATASET_GENERATION_WORKERS (their intake, batches' worth of chunks); unset: auto.
          ...(process.env["WORKERS"] === undefined ? {} : { DATASET_GENERATION_WORKERS: process.env["WORKERS"] }),
        },
      });
      replicas.push(dataset);
      stops.push(() => dataset.stop());
    }
    const ingestClient = ingest.client(IngestService);
    const inline = documents(docs);
    const { run: ingestRun } = await ingestClient.ingestDocuments({
      collection: "bench",
      sources: inline.map(([filename, content]) => ({ source: { case: "inline" as const, value: { filename, mediaType: "", content } } })),
      // One chunk per section, as this bench has always measured (DOCS × SECTIONS chunks): packing, the default,
      // would put the short synthetic sections together and leave too few chunks to reach a steady state.
      chunking: { packSections: false },
    });
    for await (const res of ingestClient.watchIngestRun({ runId: ingestRun!.id })) void res;
    const ingested = (await ingestClient.getIngestRun({ runId: ingestRun!.id })).run!;
    if (ingested.status !== IngestRunStatus.SUCCEEDED) throw new Error(`ingest ended ${IngestRunStatus[ingested.status]} (run with TEST_LOG_LEVEL=warn to see why)`);
    const chunkText = new Map<string, string>();
    const chunkList: SourceChunk[] = [];
    let pageToken = "";
    do {
      const page = await ingestClient.listChunks({ collection: "bench", page: { pageSize: 1000, pageToken } });
      for (const c of page.chunks) {
        chunkText.set(c.id, c.text);
        chunkList.push({ id: c.id, documentId: c.documentId, headingPath: [...c.headingPath], text: c.text });
      }
      pageToken = page.page!.nextPageToken;
    } while (pageToken !== "");

    const before = await endpoint.stats();
    await endpoint.trace(); // forget anything before the build
    if (condition.replicas === 0) return await clientAlone(condition, chunkList, chunkText, endpoint, before, loadBefore);
    const client = replicas[0]!.client(DatasetService);
    const { version } = await client.buildDatasetVersion({
      collection: "bench",
      settings: { model: MODEL, maxConcurrency: MAX_CONCURRENCY, questionsPerChunk: 3, negativeRatio: 0 },
    });
    const events: DatasetVersionEvent[] = [];
    for await (const res of client.watchDatasetVersion({ datasetVersionId: version!.id })) events.push(res.event!);
    const ready = (await client.getDatasetVersion({ datasetVersionId: version!.id })).version!;
    if (ready.status !== DatasetVersionStatus.READY) throw new Error(`build ended ${DatasetVersionStatus[ready.status]}: ${ready.failure?.message}`);
    const after = await endpoint.stats();
    const trace = await endpoint.trace();

    const at = (e: DatasetVersionEvent) => timestampMs(e.time!);
    const started = events.find((e) => e.event.case === "statusChanged" && e.event.value.status === DatasetVersionStatus.GENERATING)!;
    const progress = events.flatMap((e) => (e.event.case === "progress" ? [{ e, p: e.event.value }] : []));
    const last = progress.filter(({ p }) => p.chunksDone === p.chunksTotal && p.examplesAccepted === 0).at(-1)!;
    const chunks = chunkText.size;
    const succeededChunks = chunks - last.p.chunksFailed;

    // Output check: every answerable example quotes its own chunk; 3 examples per succeeded chunk before the gate.
    let correct = last.p.examplesGenerated === 3 * succeededChunks;
    let exampleToken = "";
    do {
      const page = await client.listExamples({ datasetVersionId: ready.id, page: { pageSize: 1000, pageToken: exampleToken } });
      for (const e of page.examples) if (!chunkText.get(e.contextChunkIds[0]!)?.includes(e.answer)) correct = false;
      exampleToken = page.page!.nextPageToken;
    } while (exampleToken !== "");
    const endpointStats = statsSince(after, before);
    return {
      condition,
      chunks,
      phases: phasesOf(trace, at(started), at(last.e), fullLatencyRequests(endpointStats, condition.faultAt)),
      cpuMs: cpuMsBetween(at(started), at(last.e)),
      load: [loadBefore, loadAverage()],
      generationMs: at(last.e) - at(started),
      succeededChunks,
      examplesGenerated: last.p.examplesGenerated,
      retries: last.p.llmRetries,
      endpoint: endpointStats,
      correct,
    };
  } finally {
    for (const stop of stops.reverse()) await stop();
    endpoint.child.kill();
    await nats.stop();
  }
}

const theoretical = CONCURRENCY / (LATENCY_MS / 1000);
console.log(
  `Generation bench: ${DOCS}×${SECTIONS} sections, guided-JSON requests at concurrency ${CONCURRENCY} (batches of ${BATCH} chunks), ` +
    `build max_concurrency ${MAX_CONCURRENCY}, endpoint latency ${LATENCY_MS} ms, theoretical ${theoretical.toFixed(1)} chunks/s, ${ROUNDS} round(s) of ${CONDITIONS.length} condition(s), interleaved`,
);
const share = (r: Result) => r.succeededChunks / (r.generationMs / 1000) / theoretical;
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
// Warm-up (not measured): one small build and one client-alone run, so the first measured condition does not pay for
// compiling the service's code paths in this process.
for (const c of CONDITIONS.filter((c) => c.id === "anchor" || c.id === "client")) await run(c, 1000, Math.max(1, Math.ceil(DOCS / 10)));
const rounds: Result[][] = [];
const indexOf = (id: string) => CONDITIONS.findIndex((c) => c.id === id);
for (let round = 0; round < ROUNDS; round++) {
  const results: Result[] = [];
  for (const condition of CONDITIONS) {
    const r = await run(condition, 1000 + round);
    results.push(r);
    const p = r.phases;
    console.log(
      `round ${round + 1}: ${r.condition.label}: ${pct(share(r))} (${(r.generationMs / 1000).toFixed(2)} s; startup ${p.startupMs.toFixed(0)} ms, ` +
        `fill ${p.fillMs.toFixed(0)} ms, steady ${p.steadyMs.toFixed(0)} ms at ${pct(p.steadyUse)} of the slots, drain ${p.drainMs.toFixed(0)} ms, ` +
        `tail ${p.tailMs.toFixed(0)} ms; wire bound ${p.idealMs} ms; ${((r.cpuMs * 1000) / r.chunks).toFixed(0)} µs CPU per chunk) load ${r.load[0].toFixed(2)}→${r.load[1].toFixed(2)}`,
    );
  }
  rounds.push(results);
}

console.log("");
console.log(
  "| condition | chunks | generation s (median) | chunks/s | share of theoretical (median) | share min–max | × anchor | × floor | success | requests | faults (500/429/malformed/dropped) | retries | wire bound (waves) | bound, no waves | max in flight | output checked |",
);
console.log("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|");
for (let c = 0; c < CONDITIONS.length; c++) {
  const runs = rounds.map((results) => results[c]!);
  const r = runs[0]!;
  const f = r.endpoint.faults;
  const shares = runs.map(share);
  const seconds = median(runs.map((x) => x.generationMs / 1000));
  // The most this share can be: every request that takes the full latency holds one of CONCURRENCY slots for it, so
  // the wire needs at least ⌈those requests / CONCURRENCY⌉ waves of LATENCY_MS (the phases' wire bound); without the
  // last wave's rounding up (a build of very many chunks), chunks / those requests.
  const full = fullLatencyRequests(r.endpoint, r.condition.faultAt);
  const bound = r.chunks / (Math.ceil(full / CONCURRENCY) * CONCURRENCY);
  const asymptotic = r.chunks / full;
  // Ratios within each round (same load), then their median; against the anchor and the floor of the same size.
  const [anchorAt, floorAt] = [indexOf(r.condition.anchor), indexOf(r.condition.floor)];
  const vsAnchor = median(rounds.map((results) => share(results[c]!) / share(results[anchorAt]!)));
  const vsFloor = median(rounds.map((results) => share(results[c]!) / share(results[floorAt]!)));
  const checked = runs.every((x) => x.correct && x.endpoint.withoutGuidedFields === 0);
  console.log(
    `| ${r.condition.label} | ${r.chunks} | ${seconds.toFixed(2)} | ${(median(runs.map((x) => x.succeededChunks)) / seconds).toFixed(1)} | ${pct(median(shares))} | ` +
      `${pct(Math.min(...shares))}–${pct(Math.max(...shares))} | ${vsAnchor.toFixed(3)} | ${vsFloor.toFixed(3)} | ${((median(runs.map((x) => x.succeededChunks)) / r.chunks) * 100).toFixed(2)}% | ` +
      `${r.endpoint.requests} | ${f["500"]}/${f["429"]}/${f.malformed}/${f.dropped} | ${r.retries} | ${pct(bound)} | ${pct(asymptotic)} | ${Math.max(...runs.map((x) => x.endpoint.maxInFlight))} | ${checked ? "yes" : "NO"} |`,
  );
}
if (ROUNDS > 1) console.log("(requests, faults, retries and the wire bounds: the first round's draw; each round draws its own faults)");
console.log("");
console.log("Phases (median over rounds, ms): | condition | startup | fill | steady | steady slot use | drain | tail | wire bound | CPU µs per chunk |");
console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
for (let c = 0; c < CONDITIONS.length; c++) {
  const ps = rounds.map((results) => results[c]!.phases);
  const m = (k: keyof Phases) => median(ps.map((p) => p[k]));
  console.log(
    `| ${CONDITIONS[c]!.label} | ${m("startupMs").toFixed(0)} | ${m("fillMs").toFixed(0)} | ${m("steadyMs").toFixed(0)} | ${pct(m("steadyUse"))} | ${m("drainMs").toFixed(0)} | ${m("tailMs").toFixed(0)} | ${m("idealMs").toFixed(0)} | ${median(rounds.map((results) => (results[c]!.cpuMs * 1000) / results[c]!.chunks)).toFixed(0)} |`,
  );
}
const loads = rounds.flat().flatMap((r) => r.load);
console.log(`\nLoad average (1 min) over the runs: ${Math.min(...loads).toFixed(2)}–${Math.max(...loads).toFixed(2)} on ${os.cpus().length} cores`);
const ok = rounds.flat().every((r) => r.correct && r.endpoint.withoutGuidedFields === 0 && r.endpoint.maxInFlight <= CONCURRENCY);
if (!ok) process.exitCode = 1;
