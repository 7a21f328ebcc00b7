import { tmpdir } from "node:os";
import { join } from "node:path";
import { baseServiceSchema, envDuration, envInt } from "@ragtune/config";
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
  /**
   * The internal services (defaults: their in-cluster names). Ingest: the chunks of a collection are read from it (and
   * kept current from its events); trainer: jobs and adapter files of promotions; eval: the gate evidence.
   */
  GATEWAY_INGEST_URL: serviceUrl("ingest").default("http://ingest:8080"),
  GATEWAY_TRAINER_URL: serviceUrl("trainer").default("http://trainer:8080"),
  GATEWAY_EVAL_URL: serviceUrl("eval").default("http://eval:8080"),
  GATEWAY_DATASET_URL: serviceUrl("dataset").default("http://dataset:8080"),
  /** Folder shared with the model endpoint: a promoted adapter's files are written to <dir>/<adapter ID>/ and loaded from there. */
  GATEWAY_ADAPTER_DIR: z.string().min(1).default(join(tmpdir(), "ragtune-adapters")),
  /** What the model endpoint loads: PEFT folders (vLLM) or GGUF LoRA files (the local model server). */
  GATEWAY_LORA_FORMAT: z.enum(["peft", "gguf"]).default("peft"),
  /** The model endpoint's vLLM --max-lora-rank: an adapter of a higher rank is refused before it is loaded. */
  GATEWAY_MAX_LORA_RANK: envInt({ min: 1, max: 512, default: 16 }).refine((r) => [1, 8, 16, 32, 64, 128, 256, 320, 512].includes(r), {
    message: "must be one of vLLM's --max-lora-rank values: 1, 8, 16, 32, 64, 128, 256, 320, 512",
  }),
  /** Eval items asked again after each adapter load (canaries) that must give their recorded answers; 0 turns it off. */
  GATEWAY_CANARY_ITEMS: envInt({ min: 0, max: 100, default: 3 }),
  /** Bearer token of the internal services (their RPC_AUTH_TOKEN), when they require one. */
  GATEWAY_UPSTREAM_AUTH_TOKEN: z.string().min(1).optional(),
  /** Longest question accepted, in characters (longer: RESOURCE_EXHAUSTED). */
  GATEWAY_MAX_QUESTION_CHARS: envInt({ min: 1, max: 1_000_000, default: 4000 }),
  /**
   * api-keys (default): every call needs a gateway API key (created with `npm run -w @ragtune/gateway-service keys`),
   * and a key reaches only its tenant's collections. none: no keys, every collection open (local development only).
   */
  GATEWAY_AUTH: z.enum(["api-keys", "none"]).default("api-keys"),
  /**
   * Processes serving the gateway's port (node:cluster; each a full gateway, as a replica is, and /metrics sums them):
   * one process handles up to about 480 Asks/s on one core, so a replica on a machine with more cores serves more with more.
   */
  GATEWAY_PROCESSES: envInt({ min: 1, max: 64, default: 1 }),
  /** Requests per minute each API key may make (sustained, per gateway process: see GATEWAY_PROCESSES)... */
  GATEWAY_RATE_LIMIT: envInt({ min: 1, max: 60_000_000, default: 1200 }),
  /** ...and at once after a quiet spell. */
  GATEWAY_RATE_BURST: envInt({ min: 1, max: 1_000_000, default: 40 }),
  /** Base model folder (on the trainer's machine) a pipeline run trains when its spec names none. */
  GATEWAY_PIPELINE_BASE_MODEL: z.string().min(1).optional(),
  /** How long a gateway replica's hold on a pipeline run lasts without renewal: a killed replica's runs resume elsewhere after it. */
  GATEWAY_PIPELINE_LEASE: envDuration("30s"),
  /**
   * Crash tests only: a pipeline step (e.g. `started:train`, the upstream job created but not yet recorded) where the
   * gateway stops its pipeline work and waits, so a test can kill it exactly there.
   */
  GATEWAY_TEST_HALT_AT: z
    .string()
    .regex(/^((started|recorded|finished):[a-z]+)?$/, "use <started|recorded|finished>:<stage>, e.g. started:train")
    .optional()
    .transform((v) => (v === "" ? undefined : v)),
  /** Prefix of the gateway's NATS buckets (tests isolate with their own). */
  GATEWAY_BUCKET_PREFIX: z.string().regex(/^[a-z0-9][a-z0-9-]{0,30}$/, "use lowercase letters, digits and '-'").default("gateway"),
});

export type GatewayConfig = z.infer<typeof gatewayConfigSchema>;
