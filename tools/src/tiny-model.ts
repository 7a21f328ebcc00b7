// `npm run tiny-model -- --out DIR [--layers 2 --hidden 128 --seed 0 --warmup-docs tools/sample-docs]`:
// writes a Hugging Face Llama-architecture model with random weights from a seed and the real Mistral tokenizer,
// plus its GGUF conversion, using the trainer worker's Python environment (run `npm run setup` first).
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "./stack.js";

export const workerDir = join(repoRoot, "services", "trainer", "worker");
export const workerPython = join(workerDir, ".venv", "bin", "python");

/** Run `python -m ragtune_worker.tiny_model` with the given arguments; stdout/stderr go to the given handler. */
export async function generateTinyModel(args: string[], onOutput: (text: string) => void = (t) => process.stderr.write(t)): Promise<void> {
  if (!existsSync(workerPython)) throw new Error(`no trainer worker environment at ${workerPython}: run \`npm run setup\``);
  const child = spawn(workerPython, ["-m", "ragtune_worker.tiny_model", ...args], {
    env: { ...process.env, PYTHONPATH: workerDir },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.on("data", (d: Buffer) => onOutput(d.toString()));
  child.stderr.on("data", (d: Buffer) => onOutput(d.toString()));
  const [code] = (await once(child, "exit")) as [number | null];
  if (code !== 0) throw new Error(`tiny model generation failed (exit code ${code})`);
}

if (process.argv[1]?.endsWith("tiny-model.ts")) {
  await generateTinyModel(process.argv.slice(2));
}
