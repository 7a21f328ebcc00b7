import { baseServiceSchema } from "@ragtune/config";

/** Environment of the eval service (the shared variables; its own ones arrive with its implementation). */
export const evalConfigSchema = baseServiceSchema;
