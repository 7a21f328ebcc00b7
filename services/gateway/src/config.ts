import { baseServiceSchema } from "@ragtune/config";

/** Environment of the gateway service (the shared variables; its own ones arrive with its implementation). */
export const gatewayConfigSchema = baseServiceSchema;
