// `npm run dev`: nats-server (JetStream) + all five services with readable logs; Ctrl-C stops everything.
// STACK_STORE_DIR keeps JetStream data between runs (a temp dir otherwise); STACK_PORT_BASE fixes the RPC ports
// (default 7401…7405 for ingest, dataset, trainer, eval, gateway).
import { formatLogLine, startStack } from "./stack.js";

const portBase = Number(process.env.STACK_PORT_BASE ?? 7401);
const out = (text: string) => process.stdout.write(text + "\n");

const stack = await startStack({
  storeDir: process.env.STACK_STORE_DIR,
  portBase,
  onLog: (service, line) => out(formatLogLine(service, line)),
});
out(`\nragtune dev stack is up. NATS: ${stack.natsUrl}`);
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
