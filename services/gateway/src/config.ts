import { baseServiceSchema } from "@ragtune/config";
import { llmConfigSchema } from "@ragtune/llm";
import type { z } from "zod";

/**
 * Environment of the gateway service: the shared variables and the LLM_* variables of libs/llm (the model server
 * the gateway answers with: vLLM's OpenAI-compatible API, whose `model` field selects the base model or an adapter).
 */
export const gatewayConfigSchema = baseServiceSchema.extend(llmConfigSchema.shape);

export type GatewayConfig = z.infer<typeof gatewayConfigSchema>;
