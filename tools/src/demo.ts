// `npm run demo`: runs every stage of ragtune that exists so far, end to end, on the shipped sample documents,
// then stops cleanly. Stages grow with the system; each prints what a user would want to see.
import { Health, HealthCheckResponse_ServingStatus } from "@ragtune/proto";
import { createClient } from "@ragtune/rpc";
import { SERVICE_NAMES, startStack, type Stack } from "./stack.js";

const out = (text = "") => process.stdout.write(text + "\n");

async function checkHealth(stack: Stack): Promise<void> {
  out("Health (grpc.health.v1 over gRPC, h2c):");
  for (const name of SERVICE_NAMES) {
    const service = stack.services[name];
    const health = createClient(Health, { baseUrl: service.url, protocol: "grpc", timeoutMs: 5_000 });
    const res = await health.check({ service: "" });
    const status = HealthCheckResponse_ServingStatus[res.status];
    out(`  ${name.padEnd(8)} ${service.url.padEnd(24)} ${status}`);
    if (res.status !== HealthCheckResponse_ServingStatus.SERVING) throw new Error(`${name} is ${status}`);
  }
}

const logs: string[] = [];
out("Starting the ragtune stack (nats-server with JetStream + 5 services)…");
const stack = await startStack({
  env: { LOG_LEVEL: process.env.LOG_LEVEL ?? "warn" },
  onLog: (service, line) => logs.push(`${service} ${typeof line === "string" ? line : JSON.stringify(line)}`),
});
let failed = false;
try {
  out(`NATS JetStream at ${stack.natsUrl}\n`);
  await checkHealth(stack);
} catch (err) {
  failed = true;
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.stderr.write(logs.slice(-40).join("\n") + "\n");
} finally {
  out("\nStopping the stack…");
  await stack.stop();
  out("Stopped.");
}
process.exitCode = failed ? 1 : 0;
