// `npm run -w @ragtune/tools bench:model-server [-- --requests 16 --max-tokens 64 --rounds 3]`
//
// The local model server against node-llama-cpp called directly, in the same run, on the tiny model (made by the
// trainer worker) and an adapter the trainer worker trains on it: base and adapter, concurrency 1 and 8.
//
// Like for like: both contestants load the same GGUF files with the same settings (context size, sequences =
// concurrency, 1 thread, no context shift), get the same prompts in the same order at temperature 0 with the same
// max_tokens, with end-of-sequence disabled (vLLM's ignore_eos) so every answer is max_tokens long, and keep the
// same number of requests in flight. The direct contestant runs LlamaCompletion on a
// context sequence; the server contestant is the server's CLI in a process of its own, and each request streams
// through HTTP + SSE with the project's client (libs/llm streamCompletion) in the bench process. Checked: every answer is max_tokens long, and at concurrency 1 the server's text equals
// the direct text for the same prompt.
// Figures per contestant: generated tokens / wall time (tokens counted from each contestant's own usage), and time
// to first token (request start to first streamed text) p50/p99. Rounds alternate contestants; the median round
// is reported. Overhead = 1 - server tokens/s ÷ direct tokens/s (target ≤ 10%).
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createLlmClient } from "@ragtune/llm";
import { noEndOfSequenceBias } from "@ragtune/model-server";
import { makeTinyModels } from "@ragtune/model-server/tiny-models";
import { getLlama, LlamaCompletion, type LlamaContext, LlamaLogLevel, type LlamaModel } from "node-llama-cpp";

const { values: args } = parseArgs({
  options: {
    requests: { type: "string", default: "16" },
    "max-tokens": { type: "string", default: "64" },
    rounds: { type: "string", default: "3" },
  },
});
const REQUESTS = Number(args.requests);
const MAX_TOKENS = Number(args["max-tokens"]);
const ROUNDS = Number(args.rounds);
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

/** node-llama-cpp directly: one context per model with `concurrency` sequences. */
async function direct(context: LlamaContext, model: LlamaModel, concurrency: number): Promise<RoundResult> {
  const sequences = Array.from({ length: concurrency }, () => context.getSequence());
  // Fixed-length answers: end-of-sequence is never picked (what ignore_eos asks of the server; TokenBias.set()
  // ignores end-of-generation tokens, so the bias is the server's own helper).
  const noEos = noEndOfSequenceBias(model);
  const started = performance.now();
  const answers = await pool(REQUESTS, concurrency, async (index, slot) => {
    const sequence = sequences[slot]!;
    await sequence.clearHistory();
    const tokens = model.tokenize(PROMPTS[index % PROMPTS.length]!, false);
    if (model.tokens.shouldPrependBosToken && model.tokens.bos !== null) tokens.unshift(model.tokens.bos);
    const t0 = performance.now();
    let ttftMs = -1;
    let generated = 0;
    const completion = new LlamaCompletion({ contextSequence: sequence });
    const { response } = await completion.generateCompletionWithMeta(tokens, {
      maxTokens: MAX_TOKENS,
      temperature: 0,
      tokenBias: noEos,
      disableContextShift: true,
      onToken: (t) => (generated += t.length),
      onTextChunk: (text) => {
        if (ttftMs < 0 && text !== "") ttftMs = performance.now() - t0;
      },
    });
    return { text: response, tokens: generated, ttftMs: ttftMs < 0 ? performance.now() - t0 : ttftMs };
  });
  const wallMs = performance.now() - started;
  for (const s of sequences) s.dispose();
  return { answers, wallMs };
}

async function viaServer(baseUrl: string, modelName: string, concurrency: number): Promise<RoundResult> {
  const llm = createLlmClient({ baseUrl, concurrency, maxRetries: 0, timeoutMs: 600_000 });
  const started = performance.now();
  const answers = await pool(REQUESTS, concurrency, async (index) => {
    const t0 = performance.now();
    let ttftMs = -1;
    const stream = llm.streamCompletion({ model: modelName, prompt: PROMPTS[index % PROMPTS.length]!, maxTokens: MAX_TOKENS, temperature: 0, extraBody: { ignore_eos: true } });
    for await (const delta of stream) if (ttftMs < 0 && delta.text !== "") ttftMs = performance.now() - t0;
    return { text: stream.text, tokens: stream.usage?.completionTokens ?? Number.NaN, ttftMs: ttftMs < 0 ? performance.now() - t0 : ttftMs };
  });
  const wallMs = performance.now() - started;
  llm.close();
  return { answers, wallMs };
}

function summary(result: RoundResult) {
  const tokens = result.answers.reduce((n, a) => n + a.tokens, 0);
  const ttft = result.answers.map((a) => a.ttftMs);
  return { tokens, tokPerS: (tokens / result.wallMs) * 1000, ttftP50: percentile(ttft, 50), ttftP99: percentile(ttft, 99) };
}

const median = (values: number[]) => percentile(values, 50);

const SERVER_MAIN = join(dirname(fileURLToPath(import.meta.url)), "..", "model-server", "src", "main.ts");

/** The server as users start it: its CLI in a process of its own (the client's work stays out of its event loop). */
async function startServerProcess(modelPath: string, adapterPath: string, concurrency: number) {
  const child = spawn(
    process.execPath,
    ["--conditions=@ragtune/source", "--import", "tsx", SERVER_MAIN, "--model", modelPath, "--served-model-name", "tiny", "--lora-modules", `adapter=${adapterPath}`,
      "--port", "0", "--concurrency", String(concurrency), "--context-size", String(CONTEXT_SIZE), "--threads", String(THREADS)],
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
    async close() {
      child.kill("SIGTERM");
      if (child.exitCode === null) await once(child, "exit");
    },
  };
}

const root = await mkdtemp(join(tmpdir(), "bench-model-server-"));
try {
  process.stderr.write("making the tiny model and training an adapter with the trainer worker…\n");
  const models = await makeTinyModels(root);
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: models.model });
  const rows: string[] = [];
  for (const concurrency of [1, 8]) {
    const server = await startServerProcess(models.model, models.adapter, concurrency);
    for (const variant of ["tiny", "adapter"] as const) {
      const context = await model.createContext({
        contextSize: CONTEXT_SIZE,
        sequences: concurrency,
        threads: THREADS,
        ...(variant === "adapter" ? { lora: { adapters: [{ filePath: models.adapter }] } } : {}),
      });
      // Warm-up, one each (first evaluation builds the compute graph).
      await direct(context, model, concurrency);
      await viaServer(server.baseUrl, variant, concurrency);
      const d: ReturnType<typeof summary>[] = [];
      const s: ReturnType<typeof summary>[] = [];
      for (let round = 0; round < ROUNDS; round++) {
        const a = await direct(context, model, concurrency);
        const b = await viaServer(server.baseUrl, variant, concurrency);
        a.answers.forEach((answer, i) => {
          const other = b.answers[i]!;
          // One sequence at a time, both compute exactly the same thing: the texts must be equal. With 8 in flight
          // llama.cpp batches whichever sequences are ready, and batch composition changes float sums enough to
          // flip near-tied greedy picks of the random tiny model, so there each answer is checked for its length.
          const same = concurrency === 1 ? other.text === answer.text : other.text !== "" && answer.text !== "";
          if (!same || other.tokens !== MAX_TOKENS || answer.tokens !== MAX_TOKENS) {
            throw new Error(`${variant} c=${concurrency} request ${i}: the server answered ${JSON.stringify(other.text)} (${other.tokens} tokens), node-llama-cpp ${JSON.stringify(answer.text)} (${answer.tokens})`);
          }
        });
        d.push(summary(a));
        s.push(summary(b));
      }
      await context.dispose();
      const dt = median(d.map((x) => x.tokPerS));
      const st = median(s.map((x) => x.tokPerS));
      const row = [
        variant === "tiny" ? "base" : "adapter",
        concurrency,
        d[0]!.tokens,
        dt.toFixed(0),
        st.toFixed(0),
        `${((1 - st / dt) * 100).toFixed(1)}%`,
        `${median(d.map((x) => x.ttftP50)).toFixed(1)} / ${median(d.map((x) => x.ttftP99)).toFixed(1)}`,
        `${median(s.map((x) => x.ttftP50)).toFixed(1)} / ${median(s.map((x) => x.ttftP99)).toFixed(1)}`,
      ];
      rows.push(`| ${row.join(" | ")} |`);
      process.stderr.write(`${rows.at(-1)}\n`);
    }
    await server.close();
  }
  await model.dispose();
  await llama.dispose();
  console.log(`model server vs node-llama-cpp direct — tiny model, ${REQUESTS} requests × max_tokens ${MAX_TOKENS}, greedy, median of ${ROUNDS} rounds, threads ${THREADS}`);
  console.log("| model | concurrency | tokens generated | direct tok/s | server tok/s | server overhead | direct TTFT p50 / p99 ms | server TTFT p50 / p99 ms |");
  console.log("|---|---|---|---|---|---|---|---|");
  for (const row of rows) console.log(row);
} finally {
  await rm(root, { recursive: true, force: true });
}
