import { runService } from "@ragtune/rpc";
import { ingestConfigSchema } from "./config.js";
import { startIngestService } from "./server.js";

await runService({ name: "ingest", schema: ingestConfigSchema, start: startIngestService });
