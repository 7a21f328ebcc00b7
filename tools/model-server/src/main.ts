// `node --conditions=@ragtune/source --import tsx tools/model-server/src/main.ts --model path.gguf
//   [--lora-modules name=path ...] [--port 8000] [--concurrency 4] ...` (or the MODEL_SERVER_* variables):
// serves until SIGINT/SIGTERM, then closes the server and frees the model.
import { ConfigError } from "@ragtune/config";
import { createLogger } from "@ragtune/logger";
import { loadModelServerConfig, serverOptions } from "./config.js";
import { startModelServer } from "./model-server.js";

let config;
try {
  config = loadModelServerConfig(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  process.stderr.write(`${error.message}\n`);
  process.exitCode = 2;
}
if (config !== undefined) {
  const logger = createLogger({ svc: "model-server", level: config.LOG_LEVEL });
  const shutdown = new AbortController();
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => shutdown.abort(signal));
  try {
    const server = await startModelServer({ ...serverOptions(config), logger });
    if (!shutdown.signal.aborted) await new Promise((ok) => shutdown.signal.addEventListener("abort", ok, { once: true }));
    logger.info({ signal: shutdown.signal.reason }, "shutting down");
    await server.close();
  } catch (error) {
    logger.fatal({ err: error }, `model server failed: ${(error as Error).message}`);
    process.exitCode = 1;
  }
}
