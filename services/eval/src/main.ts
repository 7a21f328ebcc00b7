import { runService } from "@ragtune/rpc";
import { evalConfigSchema } from "./config.js";
import { startEvalService } from "./server.js";

await runService({ name: "eval", schema: evalConfigSchema, start: startEvalService });
