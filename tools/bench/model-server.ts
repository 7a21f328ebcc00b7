// `npm run -w @ragtune/tools bench:model-server [-- --requests 16 --max-tokens 64 --rounds 8 --models-dir DIR
//   --stream-interval-ms 50 --concurrency 1,8 --direct-batching default|server]`
//
// The local model server against node-llama-cpp called directly, in the same run, on the tiny model (made by the
// trainer worker) and an adapter the trainer worker trains on it: base and adapter, concurrency 1 and 8.
//
// Like for like: both contestants load the same GGUF files with the same settings (context size, sequences =
// concurrency, 1 thread, no context shift), get the same prompts in the same order at temperature 0 with the same
// max_tokens, with end-of-sequence disabled (vLLM's ignore_eos) so every answer is max_tokens long, and keep the
// same number of requests in flight. The direct contestant runs LlamaCompletion on a
// context sequence; the server contestant is the server's CLI in a process of its own, and each request streams
// through HTTP + SSE with the project's client (libs/llm streamCompletion) in the bench process. Checked: every answer
// is max_tokens long (or one more, when the last token ends inside a multi-byte character), and at concurrency 1 the
// server's text equals the direct text for the same prompt.
//
// The machine may be shared, so one round is never the figure: per cell (model × concurrency) the contestants run
// `--rounds` rounds (even), back to back, in blocks of two rounds — direct then server, then server then direct — so
// a load change and whatever favours the first (or second) of two back-to-back runs hit both alike (on a loaded
// machine the second run of a round came out up to 40% slower, whichever contestant it was). A block's overhead is
// 1 − the geometric mean of its two rounds' server tokens/s ÷ direct tokens/s; the cell reports the median block
// with the lowest and highest block (the spread), the median tokens/s of each contestant, the median TTFT p50/p99,
// the CPU time each spent per generated token (direct: the bench process; server: the server process + the client
// in the bench process), and the 1-minute load average before and after the cell.
// `--models-dir DIR` keeps the tiny model and adapter in DIR and reuses them on the next run.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createLlmClient } from "@ragtune/llm";
import { noEndOfSequenceBias, StepBatcher } from "@ragtune/model-server";
import { makeTinyModels, type TinyModels } from "@ragtune/model-server/tiny-models";
import { getLlama, LlamaCompletion, type LlamaContextSequence, LlamaLogLevel, type LlamaModel } from "node-llama-cpp";
import { processCpuSeconds } from "./proc-cpu.js";

const { values: args } = parseArgs({
  options: {
    requests: { type: "string", default: "16" },
    "max-tokens": { type: "string", default: "64" },
    rounds: { type: "string", default: "8" },
    "models-dir": { type: "string" },
    "stream-interval-ms": { type: "string", default: "50" },
    concurrency: { type: "string", default: "1,8" },
    "direct-batching": { type: "string", default: "default" },
  },
});
const REQUESTS = Number(args.requests);
const MAX_TOKENS = Number(args["max-tokens"]);
const ROUNDS = Number(args.rounds);
if (!Number.isInteger(ROUNDS) || ROUNDS < 2 || ROUNDS % 2 !== 0) throw new Error(`--rounds must be an even number ≥ 2 (blocks of two rounds in both orders), got ${args.rounds}`);
const STREAM_INTERVAL_MS = Number(args["stream-interval-ms"]);
const DIRECT_BATCHING = args["direct-batching"];
if (DIRECT_BATCHING !== "default" && DIRECT_BATCHING !== "server") throw new Error(`--direct-batching is default (node-llama-cpp's own) or server (the server's step batcher), got ${DIRECT_BATCHING}`);
const CONCURRENCIES = args.concurrency.split(",").map(Number);
if (CONCURRENCIES.some((c) => !Number.isInteger(c) || c < 1)) throw new Error(`--concurrency takes a comma-separated list of integers ≥ 1, got ${args.concurrency}`);
const CONTEXT_SIZE = 512;
const THREADS = 1;

const PROMPTS = [
  "[INST] Context: The Musca service stores data in Postgres.\nQuestion: Where does Musca store data? [/INST]",
  "[INST] Context: Invoices are sent on the first day of each month.\nQuestion: When are invoices sent? [/INST]",
  "The quick brown fox jumps over the lazy dog. Retrieval augmented generation",
  "Amazon S3 stores objects in buckets. A bucket is a container for objects and",
  "[INST] Context: Support tickets are answered within 4 hours.\nQuestion: How fast are tickets answered? [/INST]",
  "To create a queue, open the console and choose",
  "[INST] Context: The Nova service is written in Go.\nQuestion: Where is Nova hosted? [/INST]",
  "Lambda functions scale automatically with the number of",
];

interface Answer {
  text: string;
  tokens: number;
  ttftMs: number;
}
interface RoundResult {
  answers: Answer[];
  wallMs: number;
  /** CPU time of the contestant's processes during the round, µs. */
  cpuUs: number;
  /** Of which the client's (the bench process) for the server contestant, µs; 0 for direct. */
  clientCpuUs: number;
}


function ownCpuUs(since: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(since);
  return used.user + used.system;
}

/** Runs `count` jobs with at most `concurrency` at once, in order of index. */
async function pool<T>(count: number, concurrency: number, job: (index: number, slot: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(count);
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, slot) => {
      while (next < count) {
        const index = next++;
        out[index] = await job(index, slot);
      }
    }),
  );
  return out;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/**
 * node-llama-cpp directly: one context per model with `concurrency` sequences, made once with the context and reused
 * by every round, as the server does (a disposed sequence's slot comes back to the context asynchronously, so
 * getSequence() right after a dispose can find none left).
 */
async function direct(sequences: LlamaContextSequence[], model: LlamaModel, concurrency: number, batcher?: StepBatcher): Promise<RoundResult> {
  // Fixed-length answers: end-of-sequence is never picked (what ignore_eos asks of the server; TokenBias.set()
  // ignores end-of-generation tokens, so the bias is the server's own helper).
  const noEos = noEndOfSequenceBias(model);
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  const answers = await pool(REQUESTS, concurrency, async (index, slot) => {
    const sequence = sequences[slot]!;
    await sequence.clearHistory();
    const tokens = model.tokenize(PROMPTS[index % PROMPTS.length]!, false);
    if (model.tokens.shouldPrependBosToken && model.tokens.bos !== null) tokens.unshift(model.tokens.bos);
    const t0 = performance.now();
    let ttftMs = -1;
    const completion = new LlamaCompletion({ contextSequence: sequence });
    const batched = batcher?.generation(MAX_TOKENS);
    // Generated tokens as the server counts them: sampled (output tokens of the sequence's decodes), also those
    // LlamaCompletion still holds back when max_tokens ends the generation.
    const sampledBefore = sequence.tokenMeter.usedOutputTokens;
    const { response } = await completion.generateCompletionWithMeta(tokens, {
      maxTokens: MAX_TOKENS,
      temperature: 0,
      tokenBias: noEos,
      disableContextShift: true,
      onToken: (t) => batched?.token(t.length),
      onTextChunk: (text) => {
        if (ttftMs < 0 && text !== "") ttftMs = performance.now() - t0;
      },
    }).finally(() => batched?.end());
    const generated = sequence.tokenMeter.usedOutputTokens - sampledBefore;
    return { text: response, tokens: generated, ttftMs: ttftMs < 0 ? performance.now() - t0 : ttftMs };
  });
  const wallMs = performance.now() - started;
  const cpuUs = ownCpuUs(cpu0);
  return { answers, wallMs, cpuUs, clientCpuUs: 0 };
}

async function viaServer(server: { baseUrl: string; pid: number }, modelName: string, concurrency: number): Promise<RoundResult> {
  const llm = createLlmClient({ baseUrl: server.baseUrl, concurrency, maxRetries: 0, timeoutMs: 600_000 });
  const cpu0 = process.cpuUsage();
  const serverCpu0 = processCpuSeconds(server.pid) * 1_000_000;
  const started = performance.now();
  const answers = await pool(REQUESTS, concurrency, async (index) => {
    const t0 = performance.now();
    let ttftMs = -1;
    const stream = llm.streamCompletion({ model: modelName, prompt: PROMPTS[index % PROMPTS.length]!, maxTokens: MAX_TOKENS, temperature: 0, extraBody: { ignore_eos: true } });
    for await (const delta of stream) if (ttftMs < 0 && delta.text !== "") ttftMs = performance.now() - t0;
    return { text: stream.text, tokens: stream.usage?.completionTokens ?? Number.NaN, ttftMs: ttftMs < 0 ? performance.now() - t0 : ttftMs };
  });
  const wallMs = performance.now() - started;
  const clientCpuUs = ownCpuUs(cpu0);
  const cpuUs = clientCpuUs + processCpuSeconds(server.pid) * 1_000_000 - serverCpu0;
  llm.close();
  return { answers, wallMs, cpuUs, clientCpuUs };
}

function summary(result: RoundResult) {
  const tokens = result.answers.reduce((n, a) => n + a.tokens, 0);
  const ttft = result.answers.map((a) => a.ttftMs);
  return {
    tokens,
    tokPerS: (tokens / result.wallMs) * 1000,
    ttftP50: percentile(ttft, 50),
    ttftP99: percentile(ttft, 99),
    cpuUsPerToken: result.cpuUs / tokens,
    clientCpuUsPerToken: result.clientCpuUs / tokens,
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

const SERVER_MAIN = join(dirname(fileURLToPath(import.meta.url)), "..", "model-server", "src", "main.ts");

/** The server as users start it: its CLI in a process of its own (the client's work stays out of its event loop). */
async function startServerProcess(modelPath: string, adapterPath: string, concurrency: number) {
  const child = spawn(
    process.execPath,
    ["--conditions=@ragtune/source", "--import", "tsx", SERVER_MAIN, "--model", modelPath, "--served-model-name", "tiny", "--lora-modules", `adapter=${adapterPath}`,
      "--port", "0", "--concurrency", String(concurrency), "--context-size", String(CONTEXT_SIZE), "--threads", String(THREADS),
      "--stream-interval-ms", String(STREAM_INTERVAL_MS)],
    { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, LOG_LEVEL: "info" } },
  );
  let out = "";
  const url = await new Promise<string>((ok, fail) => {
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /"url":"(http:[^"]+)"[^\n]*"msg":"model server listening"/.exec(out);
      if (m) ok(m[1]!);
    });
    child.once("exit", (code) => fail(new Error(`the model server exited (${code}): ${out}`)));
  });
  return {
    baseUrl: `${url}/v1`,
    pid: child.pid!,
    async close() {
      child.kill("SIGTERM");
      if (child.exitCode === null) await once(child, "exit");
    },
  };
}

/** The tiny model and a trained adapter: kept in `--models-dir` when given (and reused from there), else temporary. */
async function tinyModels(): Promise<{ models: Pick<TinyModels, "model" | "adapter">; cleanup(): Promise<void> }> {
  const dir = args["models-dir"];
  if (dir !== undefined) {
    const kept = { model: join(dir, "tiny", "model.gguf"), adapter: join(dir, "job", "adapter.gguf") };
    if (existsSync(kept.model) && existsSync(kept.adapter)) return { models: kept, cleanup: async () => undefined };
    process.stderr.write(`making the tiny model and training an adapter with the trainer worker into ${dir}…\n`);
    return { models: await makeTinyModels(dir), cleanup: async () => undefined };
  }
  const root = await mkdtemp(join(tmpdir(), "bench-model-server-"));
  process.stderr.write("making the tiny model and training an adapter with the trainer worker…\n");
  return { models: await makeTinyModels(root), cleanup: () => rm(root, { recursive: true, force: true }) };
}

const load1 = () => loadavg()[0]!.toFixed(1);
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

const { models, cleanup } = await tinyModels();
try {
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: models.model });
  const rows: string[] = [];
  for (const concurrency of CONCURRENCIES) {
    const server = await startServerProcess(models.model, models.adapter, concurrency);
    try {
      for (const variant of ["tiny", "adapter"] as const) {
        // --direct-batching server: direct gets the server's step batcher too (every generation in every decoding
        // step), which separates what the server gains by its batching from what its transport costs.
        const batcher = DIRECT_BATCHING === "server" ? new StepBatcher() : undefined;
        const context = await model.createContext({
          contextSize: CONTEXT_SIZE,
          sequences: concurrency,
          threads: THREADS,
          ...(batcher === undefined ? {} : { batching: { itemPrioritizationStrategy: batcher.strategy } }),
          ...(variant === "adapter" ? { lora: { adapters: [{ filePath: models.adapter }] } } : {}),
        });
        const sequences = Array.from({ length: concurrency }, () => context.getSequence());
        // Warm-up, one each (first evaluation builds the compute graph).
        await direct(sequences, model, concurrency, batcher);
        await viaServer(server, variant, concurrency);
        const loadBefore = load1();
        const d: ReturnType<typeof summary>[] = [];
        const s: ReturnType<typeof summary>[] = [];
        const ratios: number[] = []; // server tok/s ÷ direct tok/s per round
        const overheads: number[] = []; // per block of two rounds
        for (let round = 0; round < ROUNDS; round++) {
          // Alternating order: a load that rises or falls during the cell favours neither contestant.
          let a: RoundResult;
          let b: RoundResult;
          if (round % 2 === 0) {
            a = await direct(sequences, model, concurrency, batcher);
            b = await viaServer(server, variant, concurrency);
          } else {
            b = await viaServer(server, variant, concurrency);
            a = await direct(sequences, model, concurrency, batcher);
          }
          a.answers.forEach((answer, i) => {
            const other = b.answers[i]!;
            // One sequence at a time, both compute exactly the same thing: the texts must be equal. With 8 in flight
            // llama.cpp batches whichever sequences are ready, and batch composition changes float sums enough to
            // flip near-tied greedy picks of the random tiny model, so there each answer is checked for its length.
            const same = concurrency === 1 ? other.text === answer.text : other.text !== "" && answer.text !== "";
            // node-llama-cpp's LlamaCompletion does not stop on a token that ends inside a multi-byte character: it
            // takes one more to finish the character, so an answer of the random model may have max_tokens + 1.
            const fullLength = (tokens: number) => tokens === MAX_TOKENS || tokens === MAX_TOKENS + 1;
            if (!same || !fullLength(other.tokens) || !fullLength(answer.tokens)) {
              throw new Error(`${variant} c=${concurrency} request ${i}: the server answered ${JSON.stringify(other.text)} (${other.tokens} tokens), node-llama-cpp ${JSON.stringify(answer.text)} (${answer.tokens})`);
            }
          });
          const ds = summary(a);
          const ss = summary(b);
          d.push(ds);
          s.push(ss);
          ratios.push(ss.tokPerS / ds.tokPerS);
          if (round % 2 === 1) overheads.push(1 - Math.sqrt(ratios[round - 1]! * ratios[round]!));
          process.stderr.write(
            `  ${variant} c=${concurrency} round ${round + 1}/${ROUNDS} (${round % 2 === 0 ? "direct first" : "server first"}): direct ${ds.tokPerS.toFixed(0)} tok/s, server ${ss.tokPerS.toFixed(0)} tok/s, server ÷ direct ${ratios.at(-1)!.toFixed(3)}${round % 2 === 1 ? `, block overhead ${pct(overheads.at(-1)!)}` : ""} (load ${load1()})\n`,
          );
        }
        await context.dispose();
        const row = [
          variant === "tiny" ? "base" : "adapter",
          concurrency,
          median(d.map((x) => x.tokPerS)).toFixed(0),
          median(s.map((x) => x.tokPerS)).toFixed(0),
          `**${pct(median(overheads))}**`,
          `${pct(Math.min(...overheads))} … ${pct(Math.max(...overheads))}`,
          `${median(d.map((x) => x.ttftP50)).toFixed(1)} / ${median(d.map((x) => x.ttftP99)).toFixed(1)}`,
          `${median(s.map((x) => x.ttftP50)).toFixed(1)} / ${median(s.map((x) => x.ttftP99)).toFixed(1)}`,
          `${median(d.map((x) => x.cpuUsPerToken)).toFixed(0)} / ${median(s.map((x) => x.cpuUsPerToken)).toFixed(0)} (client ${median(s.map((x) => x.clientCpuUsPerToken)).toFixed(0)})`,
          `${loadBefore} → ${load1()}`,
        ];
        rows.push(`| ${row.join(" | ")} |`);
        process.stderr.write(`${rows.at(-1)}\n`);
      }
    } finally {
      await server.close(); // also when a check fails: no server process left behind
    }
  }
  await model.dispose();
  await llama.dispose();
  console.log(
    `model server vs node-llama-cpp direct — tiny model, ${REQUESTS} requests × max_tokens ${MAX_TOKENS} per round, greedy, ${ROUNDS} rounds per cell in ${ROUNDS / 2} blocks (direct first, then server first), threads ${THREADS}, server --stream-interval-ms ${STREAM_INTERVAL_MS}, direct batching ${DIRECT_BATCHING}, ${cpus().length} CPUs`,
  );
  console.log(
    "| model | concurrency | direct tok/s | server tok/s | server overhead (median block) | overhead, lowest … highest block | direct TTFT p50 / p99 ms | server TTFT p50 / p99 ms | CPU µs per token, direct / server + client (of which client) | load average (1 min) before → after |",
  );
  console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const row of rows) console.log(row);
} finally {
  await cleanup();
}
