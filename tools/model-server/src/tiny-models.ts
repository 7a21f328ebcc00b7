/**
 * The models the tests and the benchmark serve, made the way the project makes them: the tiny Llama model
 * (random weights, real Mistral tokenizer, model.gguf) by the trainer worker's `ragtune_worker.tiny_model`, and a
 * LoRA adapter trained on it by the trainer worker itself (`python -m ragtune_worker`, a few steps on the worker's
 * fixture data), which writes adapter.gguf next to the PEFT files.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const WORKER_DIR = join(REPO, "services", "trainer", "worker");
const PYTHON = join(WORKER_DIR, ".venv", "bin", "python");
const TRAIN_FILE = join(WORKER_DIR, "tests", "fixtures", "train.jsonl");

export interface TinyModels {
  /** The tiny model's folder (Hugging Face files + model.gguf). */
  modelDir: string;
  /** The base model GGUF. */
  model: string;
  /** A trained LoRA adapter, GGUF. */
  adapter: string;
  /** The same adapter's PEFT folder (adapter_config.json, adapter_model.safetensors). */
  adapterDir: string;
}

function run(args: string[], stdin?: string): Promise<string> {
  if (!existsSync(PYTHON)) throw new Error(`no trainer worker environment at ${PYTHON}: run \`npm run setup\``);
  return new Promise((ok, fail) => {
    const child = spawn(PYTHON, args, { cwd: WORKER_DIR, env: { ...process.env, PYTHONPATH: WORKER_DIR }, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      // The worker reads cancel commands from stdin until it ends: close stdin once the job is over.
      if (/"type": "(finished|failed|cancelled)"/.test(stdout)) child.stdin.end();
    });
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", fail);
    child.once("exit", (code) => (code === 0 ? ok(stdout) : fail(new Error(`python ${args.join(" ")} failed (${code}):\n${stdout}\n${stderr.slice(-4000)}`))));
    if (stdin === undefined) child.stdin.end();
    else child.stdin.write(`${stdin}\n`);
  });
}

/** Writes the tiny model and a trained adapter under `root` (about half a minute of CPU). */
export async function makeTinyModels(root: string): Promise<TinyModels> {
  const modelDir = await makeTinyModel(root);
  const { gguf, peftDir } = await trainTinyAdapter(modelDir, join(root, "job"));
  return { modelDir, model: join(modelDir, "model.gguf"), adapter: gguf, adapterDir: peftDir };
}

/**
 * Writes the tiny model alone to `<root>/<name>` (default `tiny`) and returns that folder (model.gguf inside); `hidden`
 * and `intermediate` make one of other shapes.
 */
export async function makeTinyModel(root: string, shape: { name?: string; hidden?: number; intermediate?: number } = {}): Promise<string> {
  const modelDir = join(root, shape.name ?? "tiny");
  await mkdir(root, { recursive: true });
  const args = ["-m", "ragtune_worker.tiny_model", "--out", modelDir];
  if (shape.hidden !== undefined) args.push("--hidden", String(shape.hidden));
  if (shape.intermediate !== undefined) args.push("--intermediate", String(shape.intermediate));
  await run(args);
  return modelDir;
}

export interface TinyAdapterOptions {
  /** Seed of the LoRA initialisation and data order (default 42): another seed gives other weights of the same shape. */
  seed?: number;
  /** LoRA rank r (default: the worker's default, 8). */
  rank?: number;
  /** Optimizer steps (default 6). */
  steps?: number;
  /** Peak learning rate (default 0.05). */
  learningRate?: number;
}

/** A trained adapter's files: the PEFT folder (adapter_config.json, adapter_model.safetensors) and its GGUF LoRA file. */
export interface TinyAdapter {
  peftDir: string;
  gguf: string;
}

/** Trains a LoRA adapter on the tiny model in `modelDir` with the trainer worker itself, into `jobDir`. */
export async function trainTinyAdapter(modelDir: string, jobDir: string, options: TinyAdapterOptions = {}): Promise<TinyAdapter> {
  const spec = {
    job_id: "model-server-test",
    model_dir: modelDir,
    train_file: TRAIN_FILE,
    output_dir: jobDir,
    method: "lora",
    max_seq_len: 64,
    micro_batch_size: 4,
    gradient_accumulation_steps: 1,
    warmup_steps: 1,
    max_steps: options.steps ?? 6,
    learning_rate: options.learningRate ?? 0.05,
    eval_interval_steps: 0,
    checkpoint_interval_steps: 0,
    gradient_checkpointing: false,
    seed: options.seed ?? 42,
    ...(options.rank === undefined ? {} : { lora_r: options.rank }),
  };
  const events = await run(["-m", "ragtune_worker"], JSON.stringify({ type: "train", spec }));
  const finished = events
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as { type: string; gguf_path?: string; adapter_dir?: string; message?: string })
    .find((e) => e.type === "finished" || e.type === "failed");
  if (finished?.type !== "finished" || finished.gguf_path === undefined || finished.adapter_dir === undefined) {
    throw new Error(`training the test adapter failed: ${events}`);
  }
  return { peftDir: finished.adapter_dir, gguf: finished.gguf_path };
}
