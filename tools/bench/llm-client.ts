/**
 * LLM client benchmark (issue 17): @ragtune/llm against a loopback OpenAI-compatible endpoint with a fixed latency,
 * N guided-JSON chat calls at a concurrency limit, once without faults (the anchor: what the client achieves on this
 * machine when nothing fails) and once with injected faults. Each run gets its own endpoint process.
 *
 *   theoretical throughput = concurrency / latency (every slot always busy with a call that succeeds first time)
 *   share                  = successful calls per second of wall time (first call to last settle) / theoretical
 *
 * Faults: a seeded draw per request at FAULT_RATE, 500 / 429 / malformed JSON / dropped connection equally likely
 * (tools/bench/loopback-endpoint.ts). A faulty attempt that takes the full latency holds a slot as long as a good one, so that mix caps the share at
 * N / (N + such attempts), about 95.7% at 5%. A third condition sends the faults a server can send before any work at once (500, 429,
 * dropped; malformed JSON, a generated body, still after the full latency; same seed, same draws), which leaves only
 * what the client itself spends on retries: backoff, queueing again, the tail.
 * Every answer names the call it belongs to ({"id": i, "answer": "answer i"}); the bench checks each result against
 * its call (the client's schema check aside), and that every request carried both guided-JSON fields.
 *
 * Run: node --conditions=@ragtune/source --import tsx tools/bench/llm-client.ts
 *      (N=2000 CONCURRENCY=32 LATENCY_MS=200 FAULT_RATE=0.05 RUNS=3 to override)
 */
import { createLlmClient, type LlmError } from "@ragtune/llm";
import { z } from "zod";
import { type EndpointConfig, type EndpointStats, startEndpoint, statsSince } from "./loopback-endpoint.js";

const N = Number(process.env["N"] ?? 2000);
const CONCURRENCY = Number(process.env["CONCURRENCY"] ?? 32);
const LATENCY_MS = Number(process.env["LATENCY_MS"] ?? 200);
const FAULT_RATE = Number(process.env["FAULT_RATE"] ?? 0.05);
const RUNS = Number(process.env["RUNS"] ?? 3);
const WARMUP = 2 * CONCURRENCY;

const answerSchema = z.object({ id: z.number().int(), answer: z.string() });

interface RunResult {
  label: string;
  faultAt: EndpointConfig["faultAt"];
  wallMs: number;
  succeeded: number;
  correct: number;
  failures: Record<string, number>;
  attempts: number;
  retries: number;
  latencies: number[];
  queueMs: number[];
  /** CPU time of this (the client's) process per call. */
  cpuUsPerCall: number;
  endpoint: EndpointStats;
}

interface Condition {
  label: string;
  faultRate: number;
  faultAt: EndpointConfig["faultAt"];
}

const CONDITIONS: Condition[] = [
  { label: "no faults (anchor)", faultRate: 0, faultAt: "latency" },
  { label: `${(FAULT_RATE * 100).toFixed(1)}% faults`, faultRate: FAULT_RATE, faultAt: "latency" },
  { label: `${(FAULT_RATE * 100).toFixed(1)}% faults, all at once`, faultRate: FAULT_RATE, faultAt: "immediate" },
];

async function run({ label, faultRate, faultAt }: Condition, seed: number): Promise<RunResult> {
  const endpoint = await startEndpoint({ latencyMs: LATENCY_MS, faultRate, faultAt, seed, answer: "id" });
  try {
    const client = createLlmClient({ baseUrl: endpoint.url, concurrency: CONCURRENCY, timeoutMs: 10_000 });
    const call = (i: number) =>
      client.json({
        messages: [
          { role: "system", content: "Answer as JSON." },
          { role: "user", content: `question ${i}` },
        ],
        schema: answerSchema,
        schemaName: "answer",
        temperature: 0,
        maxTokens: 64,
      });
    // Warm-up (fault draws count against the same seed, so a run is reproducible as a whole).
    await Promise.allSettled(Array.from({ length: WARMUP }, (_, i) => call(N + i)));
    const warm = client.stats();
    const warmEndpoint = await endpoint.stats();

    const started = performance.now();
    const cpu = process.cpuUsage();
    const settled = await Promise.allSettled(Array.from({ length: N }, (_, i) => call(i)));
    const wallMs = performance.now() - started;
    const used = process.cpuUsage(cpu);

    const result: RunResult = {
      label,
      faultAt,
      wallMs,
      succeeded: 0,
      correct: 0,
      failures: {},
      attempts: client.stats().attempts - warm.attempts,
      retries: client.stats().retries - warm.retries,
      latencies: [],
      queueMs: [],
      cpuUsPerCall: (used.user + used.system) / N,
      endpoint: statsSince(await endpoint.stats(), warmEndpoint),
    };
    settled.forEach((outcome, i) => {
      if (outcome.status === "rejected") {
        const kind = (outcome.reason as LlmError).kind ?? "other";
        result.failures[kind] = (result.failures[kind] ?? 0) + 1;
        return;
      }
      result.succeeded++;
      const { value, text, latency } = outcome.value;
      // The bench's own check: the raw text parses to exactly this call's answer.
      const reparsed = JSON.parse(text) as unknown;
      if (value.id === i && value.answer === `answer ${i}` && JSON.stringify(reparsed) === JSON.stringify(value)) result.correct++;
      result.latencies.push(latency.totalMs);
      result.queueMs.push(latency.queueMs);
    });
    return result;
  } finally {
    endpoint.child.kill();
  }
}

/** Attempts that held a slot for the whole endpoint latency: every good answer, and the slow faults. */
function fullLatencyAttempts(r: RunResult): number {
  const f = r.endpoint.faults;
  return r.faultAt === "immediate" ? r.attempts - (f["500"] + f["429"] + f.dropped) : r.attempts - f["429"];
}

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
}

function median(values: number[]): number {
  return quantile(values, 0.5);
}

async function main(): Promise<void> {
  const theoretical = CONCURRENCY / (LATENCY_MS / 1000);
  console.log(
    `LLM client bench: N=${N} guided-JSON chat calls, concurrency ${CONCURRENCY}, endpoint latency ${LATENCY_MS} ms, ` +
      `theoretical ${theoretical.toFixed(1)} calls/s (${((N / theoretical) * 1000).toFixed(0)} ms for N), ${RUNS} run(s) per condition, warm-up ${WARMUP} calls`,
  );
  const results: RunResult[] = [];
  for (let r = 0; r < RUNS; r++) {
    for (const condition of CONDITIONS) results.push(await run(condition, 1000 + r));
  }

  console.log("");
  console.log(
    "| run | condition | wall s | calls/s | share of theoretical | success | correct | attempts | injected faults (500/429/malformed/dropped) | failures | p50 / p95 / max call ms | slot use | client CPU µs/call | endpoint max in flight |",
  );
  console.log("|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|");
  results.forEach((r, i) => {
    const perSecond = r.succeeded / (r.wallMs / 1000);
    const f = r.endpoint.faults;
    // Share of slot time spent on attempts that hold a slot for the full latency.
    const slotUse = (fullLatencyAttempts(r) * LATENCY_MS) / (CONCURRENCY * r.wallMs);
    console.log(
      `| ${Math.floor(i / CONDITIONS.length) + 1} | ${r.label} | ${(r.wallMs / 1000).toFixed(2)} | ${perSecond.toFixed(1)} | ${((perSecond / theoretical) * 100).toFixed(1)}% | ` +
        `${((r.succeeded / N) * 100).toFixed(2)}% | ${r.correct}/${N} | ${r.attempts} | ${f["500"]}/${f["429"]}/${f.malformed}/${f.dropped} | ` +
        `${Object.entries(r.failures).map(([k, v]) => `${k} ${v}`).join(", ") || "none"} | ` +
        `${quantile(r.latencies, 0.5).toFixed(0)} / ${quantile(r.latencies, 0.95).toFixed(0)} / ${Math.max(...r.latencies).toFixed(0)} | ` +
        `${(slotUse * 100).toFixed(1)}% | ${r.cpuUsPerCall.toFixed(0)} | ${r.endpoint.maxInFlight} |`,
    );
  });

  const byCondition = CONDITIONS.map((c) => results.filter((r) => r.label === c.label));
  const share = (r: RunResult) => r.succeeded / (r.wallMs / 1000) / theoretical;
  const [anchor, faulty, immediate] = byCondition.map((runs) => median(runs.map(share))) as [number, number, number];
  const faultyRuns = [...byCondition[1]!, ...byCondition[2]!];
  const success = faultyRuns.reduce((n, r) => n + r.succeeded, 0) / (N * faultyRuns.length);
  // Faults that take the full latency cost a slot for as long as a good answer: the best share that mix allows.
  const bound = median(byCondition[1]!.map((r) => N / fullLatencyAttempts(r)));
  const allCorrect = results.every((r) => r.correct === r.succeeded);
  const guidedOk = results.every((r) => r.endpoint.withoutGuidedFields === 0);
  const limitOk = results.every((r) => r.endpoint.maxInFlight <= CONCURRENCY);
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  console.log("");
  console.log(
    `median share of theoretical: anchor ${pct(anchor)}; ${CONDITIONS[1]!.label} ${pct(faulty)} (${(faulty / anchor).toFixed(3)}× the anchor; ` +
      `their extra full-latency attempts alone cap it at ${pct(bound)}); ${CONDITIONS[2]!.label} ${pct(immediate)} (${(immediate / anchor).toFixed(3)}× the anchor)`,
  );
  console.log(
    `success with faults ${(success * 100).toFixed(2)}%; every result matches its call: ${allCorrect ? "yes" : "NO"}; ` +
      `every request carried response_format + guided_json: ${guidedOk ? "yes" : "NO"}; endpoint never saw more than ${CONCURRENCY} at once: ${limitOk ? "yes" : "NO"}`,
  );
  if (!allCorrect || !guidedOk || !limitOk) process.exitCode = 1;
}

await main();
