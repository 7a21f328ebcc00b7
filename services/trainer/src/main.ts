import { runService } from "@ragtune/rpc";
import { trainerConfigSchema } from "./config.js";
import { startTrainerService } from "./server.js";

await runService({ name: "trainer", schema: trainerConfigSchema, start: startTrainerService });
