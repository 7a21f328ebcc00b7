import { baseServiceSchema } from "@ragtune/config";

/** Environment of the dataset service (the shared variables; its own ones arrive with its implementation). */
export const datasetConfigSchema = baseServiceSchema;
