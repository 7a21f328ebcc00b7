/**
 * LLM client benchmark (issue 17): @ragtune/llm against a loopback OpenAI-compatible endpoint with a fixed latency,
 * N guided-JSON chat calls at a concurrency limit, once without faults (the anchor: what the client achieves on this
 * machine when nothing fails) and once with injected faults. Each run gets its own endpoint process.
 *
 *   theoretical throughput = concurrency / latency (every slot always busy with a call that succeeds first time)
 *   share                  = successful calls per second of wall time (first call to last settle) / theoretical
 *
 * Faults (a seeded draw per request, rate FAULT_RATE, the four kinds equally likely):
 *   500             after the full latency (the server worked, then failed)
 *   429             at once (a rate limiter rejects before any work), with `retry-after-ms: 100` and `retry-after: 1`
 *   malformed JSON  after the full latency: a 200 whose content is cut mid-string (not JSON)
 *   dropped         after the full latency: headers and half the body, then the socket is destroyed
 * A faulty attempt that takes the full latency holds a slot as long as a good one, so that mix caps the share at
 * N / (N + such attempts), about 95.7% at 5%. A third condition sends every fault at once (same seed, same draws),
 * which leaves only what the client itself spends on retries: backoff, queueing again, the tail.
 * Every answer names the call it belongs to ({"id": i, "answer": "answer i"}); the bench checks each result against
 * its call (the client's schema check aside), and that every request carried both guided-JSON fields.
 *
 * Run: node --conditions=@ragtune/source --import tsx tools/bench/llm-client.ts
 *      (N=2000 CONCURRENCY=32 LATENCY_MS=200 FAULT_RATE=0.05 RUNS=3 to override)
 */
import { fork, type ChildProcess } from "node:child_process";
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { createLlmClient, type LlmError } from "@ragtune/llm";
import { seededRandom } from "@ragtune/testing";
import { z } from "zod";

const N = Number(process.env["N"] ?? 2000);
const CONCURRENCY = Number(process.env["CONCURRENCY"] ?? 32);
const LATENCY_MS = Number(process.env["LATENCY_MS"] ?? 200);
const FAULT_RATE = Number(process.env["FAULT_RATE"] ?? 0.05);
const RUNS = Number(process.env["RUNS"] ?? 3);
const WARMUP = 2 * CONCURRENCY;

type Fault = "500" | "429" | "malformed" | "dropped";
const FAULTS: Fault[] = ["500", "429", "malformed", "dropped"];

interface EndpointConfig {
  latencyMs: number;
  faultRate: number;
  /** "latency": faults other than 429 come after the full latency; "immediate": every fault at once. */
  faultAt: "latency" | "immediate";
  seed: number;
}

interface EndpointStats {
  requests: number;
  faults: Record<Fault, number>;
  maxInFlight: number;
  withoutGuidedFields: number;
}

/** A seeded PRNG, so a run's faults are reproducible. */
const prng = seededRandom;

// ---------------------------------------------------------------------------------------------------------------
// The endpoint (child process)

function serve(config: EndpointConfig): void {
  const random = prng(config.seed);
  const stats: EndpointStats = { requests: 0, faults: { "500": 0, "429": 0, malformed: 0, dropped: 0 }, maxInFlight: 0, withoutGuidedFields: 0 };
  let inFlight = 0;
  const json = (res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}) => {
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...headers });
    res.end(body);
  };
  const completion = (content: string) =>
    JSON.stringify({
      id: "chatcmpl-bench",
      object: "chat.completion",
      created: 0,
      model: "bench",
      choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
      usage: { prompt_tokens: 24, completion_tokens: 12, total_tokens: 36 },
    });

  const server = createServer((req, res) => {
    inFlight++;
    stats.maxInFlight = Math.max(stats.maxInFlight, inFlight);
    res.on("close", () => inFlight--);
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      stats.requests++;
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
        messages: { content: string }[];
        response_format?: { json_schema?: { schema?: unknown } };
        guided_json?: unknown;
      };
      if (!body.response_format?.json_schema?.schema || !body.guided_json) stats.withoutGuidedFields++;
      const id = Number(/question (\d+)/.exec(body.messages.at(-1)!.content)![1]);
      const fault = random() < config.faultRate ? FAULTS[Math.floor(random() * FAULTS.length)]! : undefined;
      if (fault) stats.faults[fault]++;
      if (fault === "429") {
        json(res, 429, JSON.stringify({ error: { message: "rate limited (injected)" } }), { "retry-after-ms": "100", "retry-after": "1" });
        return;
      }
      setTimeout(() => {
        if (fault === "500") json(res, 500, JSON.stringify({ error: { message: "engine error (injected)" } }));
        else if (fault === "malformed") json(res, 200, completion(`{"id": ${id}, "answer": "answer ${id}`));
        else if (fault === "dropped") {
          const full = completion(JSON.stringify({ id, answer: `answer ${id}` }));
          res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(full) });
          res.write(full.slice(0, full.length >> 1), () => res.socket?.destroy());
        } else json(res, 200, completion(JSON.stringify({ id, answer: `answer ${id}` })));
      }, fault && config.faultAt === "immediate" ? 0 : config.latencyMs);
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, "127.0.0.1", () => process.send!({ port: (server.address() as AddressInfo).port }));
  process.on("message", (message) => {
    if (message === "stats") process.send!({ stats });
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The bench (parent process)

async function startEndpoint(config: EndpointConfig): Promise<{ child: ChildProcess; url: string; stats: () => Promise<EndpointStats> }> {
  const child = fork(fileURLToPath(import.meta.url), ["--serve", JSON.stringify(config)], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const port = await new Promise<number>((resolve, reject) => {
    child.once("message", (m) => resolve((m as { port: number }).port));
    child.once("exit", (code) => reject(new Error(`endpoint exited with ${code}`)));
  });
  return {
    child,
    url: `http://127.0.0.1:${port}/v1`,
    stats: () =>
      new Promise((resolve) => {
        child.once("message", (m) => resolve((m as { stats: EndpointStats }).stats));
        child.send("stats");
      }),
  };
}

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
  const endpoint = await startEndpoint({ latencyMs: LATENCY_MS, faultRate, faultAt, seed });
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
      endpoint: since(await endpoint.stats(), warmEndpoint),
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

/** Endpoint counts of the measured calls only (the warm-up's taken off; the maximum in flight covers both). */
function since(after: EndpointStats, before: EndpointStats): EndpointStats {
  const faults = { ...after.faults };
  for (const f of FAULTS) faults[f] -= before.faults[f];
  return {
    requests: after.requests - before.requests,
    faults,
    maxInFlight: after.maxInFlight,
    withoutGuidedFields: after.withoutGuidedFields,
  };
}

/** Attempts that held a slot for the whole endpoint latency: every good answer, and the slow faults. */
function fullLatencyAttempts(r: RunResult): number {
  const f = r.endpoint.faults;
  return r.faultAt === "immediate" ? r.attempts - (f["500"] + f["429"] + f.malformed + f.dropped) : r.attempts - f["429"];
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

if (process.argv[2] === "--serve") serve(JSON.parse(process.argv[3]!) as EndpointConfig);
else await main();
