import { runService } from "@ragtune/rpc";
import { gatewayConfigSchema } from "./config.js";
import { startGatewayService } from "./server.js";

await runService({ name: "gateway", schema: gatewayConfigSchema, start: startGatewayService, processes: (config) => config.GATEWAY_PROCESSES });
