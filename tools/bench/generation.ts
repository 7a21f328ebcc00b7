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
 * The build's max_concurrency is twice the concurrency, so batches wait in the queue ahead of the wire; each replica's
 * LLM_CONCURRENCY (the concurrency, halved with two replicas) caps the requests on the wire, which the endpoint checks.
 *
 * Conditions: no faults (the anchor), 5% faults after the full latency, 5% faults at once (same seed, same draws), and
 * the anchor's load shared by two replicas with half the concurrency each. The bench checks that each version
 * has 3 examples per succeeded chunk before the quality gate, answers copied from their own chunk, and that the
 * endpoint never saw more requests at once than the concurrency.
 *
 * Run: node --conditions=@ragtune/source --import tsx tools/bench/generation.ts
 *      (DOCS=100 SECTIONS=10 CONCURRENCY=32 LATENCY_MS=200 FAULT_RATE=0.05 BATCH=8 to override)
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { DatasetService, DatasetVersionStatus, type DatasetVersionEvent, IngestRunStatus, IngestService } from "@ragtune/proto";
import { startTestService, type TestService } from "@ragtune/rpc";
import { seededRandom, startNatsServer } from "@ragtune/testing";
import { datasetConfigSchema } from "../../services/dataset/src/config.js";
import { startDatasetService } from "../../services/dataset/src/server.js";
import { ingestConfigSchema } from "../../services/ingest/src/config.js";
import { startIngestService } from "../../services/ingest/src/server.js";
import { type EndpointConfig, type EndpointStats, fullLatencyRequests, startEndpoint } from "./loopback-endpoint.js";

const DOCS = Number(process.env["DOCS"] ?? 100);
const SECTIONS = Number(process.env["SECTIONS"] ?? 10);
const CONCURRENCY = Number(process.env["CONCURRENCY"] ?? 32);
const LATENCY_MS = Number(process.env["LATENCY_MS"] ?? 200);
const FAULT_RATE = Number(process.env["FAULT_RATE"] ?? 0.05);
const BATCH = Number(process.env["BATCH"] ?? 8);
const MODEL = "bench-writer";

const WORDS = (
  "ledger account invoice payment balance entry credit debit report quarter audit archive supplier currency branch " +
  "office approval officer record register policy rule period year month schedule queue retry storage vault limit"
).split(" ");

/** Synthetic Markdown: DOCS documents of SECTIONS sections, three 10–16-word sentences each (one chunk per section). */
function documents(): [string, Uint8Array][] {
  const random = seededRandom(7);
  const word = () => WORDS[Math.floor(random() * WORDS.length)]!;
  const sentence = () => {
    const n = 10 + Math.floor(random() * 7);
    const s = Array.from({ length: n }, word).join(" ");
    return `${s[0]!.toUpperCase()}${s.slice(1)}.`;
  };
  return Array.from({ length: DOCS }, (_, d) => {
    const sections = Array.from({ length: SECTIONS }, (_, s) => `## Section ${d}.${s}\n\n${sentence()} ${sentence()} ${sentence()}\n`);
    return [`doc-${String(d).padStart(4, "0")}.md`, Buffer.from(`# Document ${d}\n\n${sections.join("\n")}`, "utf8")];
  });
}

interface Condition {
  label: string;
  faultRate: number;
  faultAt: EndpointConfig["faultAt"];
  replicas: number;
}

const CONDITIONS: Condition[] = [
  { label: "no faults (anchor)", faultRate: 0, faultAt: "latency", replicas: 1 },
  { label: `${(FAULT_RATE * 100).toFixed(1)}% faults`, faultRate: FAULT_RATE, faultAt: "latency", replicas: 1 },
  { label: `${(FAULT_RATE * 100).toFixed(1)}% faults, all at once`, faultRate: FAULT_RATE, faultAt: "immediate", replicas: 1 },
  { label: "no faults, 2 replicas × half the concurrency", faultRate: 0, faultAt: "latency", replicas: 2 },
];

interface Result {
  condition: Condition;
  chunks: number;
  generationMs: number;
  succeededChunks: number;
  examplesGenerated: number;
  retries: number;
  endpoint: EndpointStats;
  correct: boolean;
}

async function run(condition: Condition, seed: number): Promise<Result> {
  const nats = await startNatsServer();
  const endpoint = await startEndpoint({ latencyMs: LATENCY_MS, faultRate: condition.faultRate, faultAt: condition.faultAt, seed, answer: "qa-pairs" });
  const stops: (() => Promise<void>)[] = [];
  const replicas: TestService<ReturnType<typeof datasetConfigSchema.parse>>[] = [];
  try {
    const ingest = await startTestService({ definition: { name: "ingest", schema: ingestConfigSchema, start: startIngestService }, nats });
    stops.push(() => ingest.stop());
    const perReplica = Math.floor(CONCURRENCY / condition.replicas);
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
        },
      });
      replicas.push(dataset);
      stops.push(() => dataset.stop());
    }
    const ingestClient = ingest.client(IngestService);
    const docs = documents();
    const { run: ingestRun } = await ingestClient.ingestDocuments({
      collection: "bench",
      sources: docs.map(([filename, content]) => ({ source: { case: "inline" as const, value: { filename, mediaType: "", content } } })),
    });
    for await (const res of ingestClient.watchIngestRun({ runId: ingestRun!.id })) void res;
    const ingested = (await ingestClient.getIngestRun({ runId: ingestRun!.id })).run!;
    if (ingested.status !== IngestRunStatus.SUCCEEDED) throw new Error(`ingest ended ${IngestRunStatus[ingested.status]}`);
    const chunkText = new Map<string, string>();
    let pageToken = "";
    do {
      const page = await ingestClient.listChunks({ collection: "bench", page: { pageSize: 1000, pageToken } });
      for (const c of page.chunks) chunkText.set(c.id, c.text);
      pageToken = page.page!.nextPageToken;
    } while (pageToken !== "");

    const before = await endpoint.stats();
    const client = replicas[0]!.client(DatasetService);
    const { version } = await client.buildDatasetVersion({
      collection: "bench",
      settings: { model: MODEL, maxConcurrency: 2 * CONCURRENCY, questionsPerChunk: 3, negativeRatio: 0 },
    });
    const events: DatasetVersionEvent[] = [];
    for await (const res of client.watchDatasetVersion({ datasetVersionId: version!.id })) events.push(res.event!);
    const ready = (await client.getDatasetVersion({ datasetVersionId: version!.id })).version!;
    if (ready.status !== DatasetVersionStatus.READY) throw new Error(`build ended ${DatasetVersionStatus[ready.status]}: ${ready.failure?.message}`);
    const after = await endpoint.stats();

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
    return {
      condition,
      chunks,
      generationMs: at(last.e) - at(started),
      succeededChunks,
      examplesGenerated: last.p.examplesGenerated,
      retries: last.p.llmRetries,
      endpoint: {
        requests: after.requests - before.requests,
        faults: { "500": after.faults["500"] - before.faults["500"], "429": after.faults["429"] - before.faults["429"], malformed: after.faults.malformed - before.faults.malformed, dropped: after.faults.dropped - before.faults.dropped },
        maxInFlight: after.maxInFlight,
        withoutGuidedFields: after.withoutGuidedFields - before.withoutGuidedFields,
      },
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
    `endpoint latency ${LATENCY_MS} ms, theoretical ${theoretical.toFixed(1)} chunks/s`,
);
const results: Result[] = [];
for (const condition of CONDITIONS) results.push(await run(condition, 1000));
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const share = (r: Result) => r.succeededChunks / (r.generationMs / 1000) / theoretical;
console.log("");
console.log("| condition | chunks | generation s | chunks/s | share of theoretical | × anchor | success | requests | faults (500/429/malformed/dropped) | retries | full-latency bound | max in flight | output checked |");
console.log("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|");
for (const r of results) {
  const f = r.endpoint.faults;
  const perSecond = r.succeededChunks / (r.generationMs / 1000);
  const bound = r.chunks / fullLatencyRequests(r.endpoint, r.condition.faultAt);
  console.log(
    `| ${r.condition.label} | ${r.chunks} | ${(r.generationMs / 1000).toFixed(2)} | ${perSecond.toFixed(1)} | ${pct(share(r))} | ${(share(r) / share(results[0]!)).toFixed(3)} | ` +
      `${((r.succeededChunks / r.chunks) * 100).toFixed(2)}% | ${r.endpoint.requests} | ${f["500"]}/${f["429"]}/${f.malformed}/${f.dropped} | ${r.retries} | ${pct(bound)} | ${r.endpoint.maxInFlight} | ${r.correct && r.endpoint.withoutGuidedFields === 0 ? "yes" : "NO"} |`,
  );
}
const ok = results.every((r) => r.correct && r.endpoint.withoutGuidedFields === 0 && r.endpoint.maxInFlight <= CONCURRENCY);
if (!ok) process.exitCode = 1;
