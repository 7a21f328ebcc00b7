// A service main.ts of the usual shape, for the runService test (run as a child process).
import { baseServiceSchema } from "@ragtune/config";
import { runService } from "../src/index.js";
import { testRoutes } from "./fixtures.js";

await runService({
  name: "fixture",
  schema: baseServiceSchema,
  async start({ logger }) {
    return { register: testRoutes, stop: async () => logger.info("fixture released") };
  },
  // FIXTURE_PROCESSES > 1: that many processes on one port (processes.ts).
  processes: () => Number(process.env.FIXTURE_PROCESSES ?? 1),
});
