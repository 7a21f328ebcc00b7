// `npm run dev`: nats-server (JetStream) + all five services with readable logs; Ctrl-C stops everything.
// STACK_STORE_DIR keeps JetStream data between runs (a temp dir otherwise); STACK_PORT_BASE fixes the RPC ports
// (default 7401…7405 for ingest, dataset, trainer, eval, gateway; the local model server on 7400).
// The local model server starts too when there is a model: STACK_MODEL (a GGUF file; default the demo's tiny model,
// .data/demo/tiny-model/model.gguf, once `npm run demo` made it) and STACK_LORA_MODULES ("name=adapter.gguf ...").
import { existsSync } from "node:fs";
import { join } from "node:path";
import { formatLogLine, repoRoot, startStack, type StackModelServer } from "./stack.js";

const portBase = Number(process.env.STACK_PORT_BASE ?? 7401);
const out = (text: string) => process.stdout.write(text + "\n");

const demoModel = join(process.env.DEMO_DIR ?? join(repoRoot, ".data", "demo"), "tiny-model", "model.gguf");
const model = process.env.STACK_MODEL ?? (existsSync(demoModel) ? demoModel : undefined);
const loraModules = (process.env.STACK_LORA_MODULES ?? "")
  .split(/\s+/)
  .filter(Boolean)
  .map((m) => {
    const at = m.indexOf("=");
    if (at <= 0) throw new Error(`STACK_LORA_MODULES: "${m}" is not name=path`);
    return { name: m.slice(0, at), path: m.slice(at + 1) };
  });
const modelServer: StackModelServer | undefined = model === undefined ? undefined : { model, servedModelName: "base", loraModules };

const stack = await startStack({
  storeDir: process.env.STACK_STORE_DIR,
  portBase,
  ...(modelServer === undefined ? {} : { modelServer }),
  onLog: (service, line) => out(formatLogLine(service, line)),
});
out(`\nragtune dev stack is up. NATS: ${stack.natsUrl}`);
if (stack.modelServer !== undefined) out(`  ${"model".padEnd(8)} ${stack.modelServer.baseUrl} (base model "base"${loraModules.length ? `, adapters ${loraModules.map((m) => m.name).join(", ")}` : ""})`);
else out("  (no local model server: set STACK_MODEL to a GGUF file, or run `npm run demo` once to make the tiny model)");
for (const s of Object.values(stack.services)) out(`  ${s.name.padEnd(8)} ${s.url}`);
out("Ctrl-C stops everything.\n");

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  out("stopping…");
  await stack.stop();
  out("stopped.");
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
