import { connectBus } from "@ragtune/bus";
import { runService } from "@ragtune/rpc";
import { ingestConfigSchema } from "./config.js";
import { createIngestApp } from "./server.js";

// Config, logger, RPC server and SIGINT/SIGTERM come from the shared bootstrap; the ingest service
// adds its bus, stores and runner, resumes unfinished runs once listening, and drains the bus last.
await runService({
  name: "ingest",
  schema: ingestConfigSchema,
  async start({ config, logger }) {
    const bus = await connectBus({ servers: config.NATS_URL, name: "ingest", logger });
    const app = await createIngestApp({ config, bus, logger });
    return {
      register: (router) => app.register(router),
      async onListening() {
        await app.resume();
      },
      async stop() {
        await app.close();
        await bus.close();
      },
    };
  },
});
