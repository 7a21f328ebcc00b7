/**
 * Eval client benchmark (issue 18): the eval service's answering loop (services/eval answering.ts: a pool of
 * `concurrency` workers, each answer scored as it arrives) against a loopback OpenAI-compatible endpoint with a fixed
 * latency, in its own process, serving at most CONCURRENCY requests at once.
 *
 *   capacity = concurrency / latency          (every slot of the endpoint busy all the time)
 *   share    = answers per second of wall time / capacity
 *
 * Contestants, same items, same endpoint, same concurrency, each run RUNS times on a fresh endpoint:
 *   anchor       @ragtune/llm's client alone: N /v1/completions calls at once behind its own concurrency limit, no
 *                scoring (what the transport achieves on this machine)
 *   eval client  answerItems over the same N items (prompts rendered by the dataset's training template), scoring
 *                every answer (F1, ROUGE-L, grounding, refusal, format checks)
 * The endpoint answers each prompt with its item's reference (found by the question in the prompt), so every answer
 * of both contestants is checked: the text must equal the reference, and every eval answer must be scored a success.
 *
 * Run: node --conditions=@ragtune/source --import tsx tools/bench/eval-client.ts
 *      (N=2000 CONCURRENCY=32 LATENCY_MS=200 RUNS=3 to override)
 */
import { fork, type ChildProcess } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { answerItems } from "@ragtune/eval-service/answering";
import { parseEvalFile, type EvalItem } from "@ragtune/eval-service/eval-items";
import { DEFAULT_SUCCESS_RULE } from "@ragtune/eval-service/metrics";
import { createLlmClient } from "@ragtune/llm";

const N = Number(process.env["N"] ?? 2000);
const CONCURRENCY = Number(process.env["CONCURRENCY"] ?? 32);
const LATENCY_MS = Number(process.env["LATENCY_MS"] ?? 200);
const RUNS = Number(process.env["RUNS"] ?? 3);
const WARMUP = 2 * CONCURRENCY;

const TOPICS = ["backups", "restores", "tokens", "regions", "uploads", "audit logs", "alerts", "quotas"];

/** N + WARMUP items of a synthetic eval file: each a context paragraph whose first sentence is the answer. */
function makeItems(count: number): EvalItem[] {
  const rows = Array.from({ length: count }, (_, i) => {
    const topic = TOPICS[i % TOPICS.length]!;
    const reference = `The ${topic} setting number ${i} is kept for ${(i % 90) + 1} days in region ${i % 7}.`;
    return JSON.stringify({
      id: `item-${i}`,
      question: `How long is the ${topic} setting number ${i} kept?`,
      reference,
      answerable: true,
      context: `${reference} Operators can change it in the console. Changes apply to new ${topic} only and are audited. ${"Further details follow in the operations guide. ".repeat(6)}`,
      heading_path: ["Operations guide", topic],
      question_type: "factual",
      source_document: `${topic}.md`,
    });
  });
  return parseEvalFile(new TextEncoder().encode(rows.join("\n")));
}

// ---------------------------------------------------------------------------------------------------------------
// The endpoint (child process)

function serve(config: { latencyMs: number; slots: number; count: number }): void {
  const references = new Map(makeItems(config.count).map((i) => [i.question, i.reference]));
  let inFlight = 0;
  let maxInFlight = 0;
  let requests = 0;
  const waiting: (() => void)[] = [];
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on("data", (c: Buffer) => parts.push(c));
    req.on("end", () => {
      const body = JSON.parse(Buffer.concat(parts).toString("utf8")) as { prompt: string; model: string };
      const question = /Question: ([\s\S]*) \[\/INST\]$/.exec(body.prompt)?.[1] ?? "";
      const text = references.get(question) ?? "unknown question";
      const run = () => {
        inFlight++;
        requests++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        setTimeout(() => {
          const out = JSON.stringify({
            id: "cmpl-bench",
            object: "text_completion",
            model: body.model,
            choices: [{ index: 0, text, finish_reason: "stop" }],
            usage: { prompt_tokens: 120, completion_tokens: 16, total_tokens: 136 },
          });
          res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(out) }).end(out);
          inFlight--;
          waiting.shift()?.();
        }, config.latencyMs);
      };
      // At most `slots` requests are served at once (a model server's batch); the rest wait their turn.
      if (inFlight < config.slots) run();
      else waiting.push(run);
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, "127.0.0.1", () => process.send!({ port: (server.address() as AddressInfo).port }));
  process.on("message", (m) => {
    if (m === "stats") process.send!({ requests, maxInFlight });
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The bench (parent process)

async function startEndpoint(count: number): Promise<{ child: ChildProcess; url: string; stats(): Promise<{ requests: number; maxInFlight: number }> }> {
  const config = { latencyMs: LATENCY_MS, slots: CONCURRENCY, count };
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
        child.once("message", (m) => resolve(m as { requests: number; maxInFlight: number }));
        child.send("stats");
      }),
  };
}

interface Result {
  wallMs: number;
  correct: number;
  cpuUsPerAnswer: number;
  maxInFlight: number;
}

async function runAnchor(items: EvalItem[], warmup: EvalItem[]): Promise<Result> {
  const endpoint = await startEndpoint(items.length + warmup.length);
  try {
    const client = createLlmClient({ baseUrl: endpoint.url, concurrency: CONCURRENCY, timeoutMs: 30_000, maxRetries: 0 });
    const call = (item: EvalItem) => client.complete({ model: "bench", prompt: item.prompt, temperature: 0, maxTokens: 200 });
    await Promise.all(warmup.map(call));
    const cpu = process.cpuUsage();
    const started = performance.now();
    const results = await Promise.all(items.map(call));
    const wallMs = performance.now() - started;
    const used = process.cpuUsage(cpu);
    const correct = results.filter((r, i) => r.text === items[i]!.reference).length;
    client.close();
    return { wallMs, correct, cpuUsPerAnswer: (used.user + used.system) / items.length, maxInFlight: (await endpoint.stats()).maxInFlight };
  } finally {
    endpoint.child.kill();
  }
}

async function runEvalClient(items: EvalItem[], warmup: EvalItem[]): Promise<Result> {
  const endpoint = await startEndpoint(items.length + warmup.length);
  try {
    const client = createLlmClient({ baseUrl: endpoint.url, concurrency: CONCURRENCY, timeoutMs: 30_000, maxRetries: 0 });
    const options = { endpoint: client, models: ["bench"], concurrency: CONCURRENCY, chat: false, sampling: { temperature: 0, maxTokens: 200 }, successRule: DEFAULT_SUCCESS_RULE, signal: new AbortController().signal };
    await answerItems({ ...options, items: warmup });
    const cpu = process.cpuUsage();
    const started = performance.now();
    const scored = await answerItems({ ...options, items });
    const wallMs = performance.now() - started;
    const used = process.cpuUsage(cpu);
    const correct = scored.filter((s) => s.answers[0]!.outcome.text === s.item.reference && s.answers[0]!.scores.success).length;
    client.close();
    return { wallMs, correct, cpuUsPerAnswer: (used.user + used.system) / items.length, maxInFlight: (await endpoint.stats()).maxInFlight };
  } finally {
    endpoint.child.kill();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const all = makeItems(N + WARMUP);
  const warmup = all.slice(N);
  const items = all.slice(0, N);
  const capacity = (CONCURRENCY * 1000) / LATENCY_MS;
  console.log(`eval client bench: N=${N} answers, concurrency ${CONCURRENCY}, endpoint latency ${LATENCY_MS} ms, ${CONCURRENCY} slots → capacity ${capacity.toFixed(1)} answers/s; ${RUNS} runs each, medians`);
  const rows: { name: string; runs: Result[] }[] = [
    { name: "anchor (llm client alone)", runs: [] },
    { name: "eval client (answer + score)", runs: [] },
  ];
  for (let r = 0; r < RUNS; r++) {
    rows[0]!.runs.push(await runAnchor(items, warmup));
    rows[1]!.runs.push(await runEvalClient(items, warmup));
  }
  const throughput = (x: Result) => (N * 1000) / x.wallMs;
  console.log("");
  console.log("| contestant | answers/s | share of capacity | correct | CPU µs/answer | max in flight |");
  console.log("|---|---|---|---|---|---|");
  const medians = rows.map(({ name, runs }) => {
    const t = median(runs.map(throughput));
    const correct = Math.min(...runs.map((x) => x.correct));
    console.log(
      `| ${name} | ${t.toFixed(1)} | ${((t / capacity) * 100).toFixed(1)}% | ${correct}/${N} | ${median(runs.map((x) => x.cpuUsPerAnswer)).toFixed(0)} | ${Math.max(...runs.map((x) => x.maxInFlight))} |`,
    );
    if (correct !== N) throw new Error(`${name}: ${N - correct} answers were wrong or not scored a success`);
    return t;
  });
  console.log("");
  console.log(`eval client / anchor: ${(medians[1]! / medians[0]!).toFixed(3)}; eval client share of capacity ${((medians[1]! / capacity) * 100).toFixed(1)}% (target ≥ 95%)`);
}

if (process.argv[2] === "--serve") serve(JSON.parse(process.argv[3]!) as { latencyMs: number; slots: number; count: number });
else await main();
