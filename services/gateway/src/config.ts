import { baseServiceSchema, envInt } from "@ragtune/config";
import { llmConfigSchema } from "@ragtune/llm";
import { z } from "zod";

const serviceUrl = (name: string) =>
  z.url({ protocol: /^https?$/, message: `must be the ${name} service's http(s) URL, e.g. http://127.0.0.1:50051` });

/**
 * Environment of the gateway service: the shared variables and the LLM_* variables of libs/llm (the model server
 * the gateway answers with: vLLM's OpenAI-compatible API, whose `model` field selects the base model or an adapter),
 * plus where the upstream services are.
 */
export const gatewayConfigSchema = baseServiceSchema.extend({
  ...llmConfigSchema.shape,
  /** The ingest service: the chunks of a collection are read from it (and kept current from its events). */
  GATEWAY_INGEST_URL: serviceUrl("ingest"),
  /** Bearer token of the internal services (their RPC_AUTH_TOKEN), when they require one. */
  GATEWAY_UPSTREAM_AUTH_TOKEN: z.string().min(1).optional(),
  /** Longest question accepted, in characters (longer: RESOURCE_EXHAUSTED). */
  GATEWAY_MAX_QUESTION_CHARS: envInt({ min: 1, max: 1_000_000, default: 4000 }),
  /** Prefix of the gateway's NATS buckets (tests isolate with their own). */
  GATEWAY_BUCKET_PREFIX: z.string().regex(/^[a-z0-9][a-z0-9-]{0,30}$/, "use lowercase letters, digits and '-'").default("gateway"),
});

export type GatewayConfig = z.infer<typeof gatewayConfigSchema>;
