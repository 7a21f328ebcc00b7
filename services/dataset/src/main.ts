import { runService } from "@ragtune/rpc";
import { datasetConfigSchema } from "./config.js";
import { startDatasetService } from "./server.js";

await runService({ name: "dataset", schema: datasetConfigSchema, start: startDatasetService });
