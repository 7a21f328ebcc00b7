import { baseServiceSchema, envDuration, envInt } from "@ragtune/config";
import { llmConfigSchema } from "@ragtune/llm";
import { z } from "zod";

/**
 * Environment of the dataset service. The LLM_* variables (libs/llm) point at the generation model's endpoint; unlike
 * other services, LLM_BASE_URL has no default here: unset, builds that name a `settings.model` are refused, and builds
 * without one use the extractive generator.
 */
export const datasetConfigSchema = baseServiceSchema.extend({
  ...llmConfigSchema.shape,
  /** The generation model's OpenAI-compatible server (vLLM: http://<host>:8000/v1); unset: no LLM generation. */
  LLM_BASE_URL: z
    .string()
    .refine((value) => {
      try {
        return ["http:", "https:"].includes(new URL(value).protocol);
      } catch {
        return false;
      }
    }, "expected an http(s) URL such as http://127.0.0.1:8000/v1")
    .optional(),
  /** The ingest service the chunks of a collection are read from (its RPC URL). */
  DATASET_INGEST_URL: z.url({ protocol: /^https?$/, message: "must be the ingest service's http(s) URL, e.g. http://127.0.0.1:50051" }),
  /** Bearer token for the ingest service, when it requires one (its RPC_AUTH_TOKEN). */
  DATASET_INGEST_AUTH_TOKEN: z.string().min(1).optional(),
  /** Prefix of the dataset service's NATS buckets and streams (tests isolate with their own). */
  DATASET_BUCKET_PREFIX: z.string().regex(/^[a-z0-9][a-z0-9-]{0,30}$/, "use lowercase letters, digits and '-'").default("dataset"),
  /** Tokenizer of the target model: the token budget of a training row is counted with it. */
  DATASET_TOKENIZER: z.enum(["mistral", "llama3", "qwen3"]).default("mistral"),
  /** A build (generation, checks, splits, exports) that runs longer is stopped and the version fails. */
  DATASET_BUILD_TIMEOUT: envDuration("15m"),
  /** How long a replica's claim on a build lasts without renewal; another replica takes an abandoned build after it. */
  DATASET_BUILD_LEASE: envDuration("30s"),
  /** Chunks per generation batch (the unit the replicas share through the work queue and a resumed build keeps). */
  DATASET_GENERATION_BATCH_CHUNKS: envInt({ min: 1, max: 256, default: 8 }),
  /**
   * Batches' worth of chunks this replica has in progress at most (counted by chunk; chunks sleeping before a retry not
   * counted); 0 (default): ⌈2 × LLM_CONCURRENCY / batch⌉, as many chunks waiting for a slot as on the wire.
   */
  DATASET_GENERATION_WORKERS: envInt({ min: 0, max: 1024, default: 0 }),
  /** A generation batch whose worker stops answering for this long goes to another replica. */
  DATASET_GENERATION_ACK_WAIT: envDuration("30s"),
});

export type DatasetConfig = z.infer<typeof datasetConfigSchema>;
