import { envDuration, envInt } from "@ragtune/config";
import type { Logger } from "@ragtune/logger";
import { z } from "zod";
import { createLlmClient, type LlmClient, type LlmClientOptions } from "./client.js";
import { DEFAULT_GUIDED_JSON_FIELDS, GUIDED_JSON_FIELDS, type GuidedJsonField } from "./protocol.js";
import { Secret } from "./secret.js";

/**
 * The model-server variables, for every service that talks to a model. A service adds them to its schema:
 * `baseServiceSchema.extend(llmConfigSchema.shape)` (or `llmConfigSchema.extend({...})`).
 */
export const llmConfigSchema = z.object({
  /** The OpenAI-compatible server, with or without its `/v1` (vLLM: `http://<host>:8000/v1`). */
  LLM_BASE_URL: z
    .string()
    .default("http://127.0.0.1:8000/v1")
    .refine((value) => {
      try {
        return ["http:", "https:"].includes(new URL(value).protocol);
      } catch {
        return false;
      }
    }, "expected an http(s) URL such as http://127.0.0.1:8000/v1"),
  /** Bearer token (vLLM `--api-key`). Parsed into a Secret, so logging the config prints "[redacted]". */
  LLM_API_KEY: z
    .string()
    .optional()
    .transform((value) => (value === undefined ? undefined : new Secret(value))),
  /** Model for requests that name none: the served base model or a LoRA adapter name. */
  LLM_MODEL: z.string().min(1).optional(),
  /** Requests on the wire at once per process; the rest wait in a FIFO queue. */
  LLM_CONCURRENCY: envInt({ min: 1, max: 4096, default: 32 }),
  /** Per attempt: time to a complete response, or the longest silence of a stream. */
  LLM_TIMEOUT: envDuration("120s").refine((ms) => ms > 0, "must be longer than 0"),
  /** Retries of rate limits, 5xx, timeouts, dropped connections and malformed JSON. */
  LLM_MAX_RETRIES: envInt({ min: 0, max: 20, default: 4 }),
  /**
   * Request fields that carry a guided-JSON schema, comma-separated: response_format (OpenAI), guided_json (vLLM
   * up to 0.11), structured_outputs (vLLM 0.10.2 and later).
   */
  LLM_GUIDED_JSON_FIELDS: z
    .string()
    .default(DEFAULT_GUIDED_JSON_FIELDS.join(","))
    .transform((value, ctx) => {
      const fields = value.split(",").map((f) => f.trim()).filter(Boolean);
      const unknown = fields.filter((f) => !(GUIDED_JSON_FIELDS as readonly string[]).includes(f));
      if (fields.length === 0 || unknown.length > 0) {
        ctx.addIssue({
          code: "custom",
          message: `expected a comma-separated list of ${GUIDED_JSON_FIELDS.join(", ")}${unknown.length ? `, got "${unknown.join(", ")}"` : ""}`,
        });
        return z.NEVER;
      }
      return [...new Set(fields)] as GuidedJsonField[];
    }),
});

export type LlmConfig = z.infer<typeof llmConfigSchema>;

/** The client for a service's parsed config; logs where it points (the key shows as "[redacted]"). */
export function llmClientFromConfig(
  config: LlmConfig,
  logger: Logger,
  options: Pick<LlmClientOptions, "signal" | "onRetry" | "headers"> = {},
): LlmClient {
  const client = createLlmClient({
    ...options,
    baseUrl: config.LLM_BASE_URL,
    ...(config.LLM_API_KEY === undefined ? {} : { apiKey: config.LLM_API_KEY }),
    ...(config.LLM_MODEL === undefined ? {} : { model: config.LLM_MODEL }),
    concurrency: config.LLM_CONCURRENCY,
    timeoutMs: config.LLM_TIMEOUT,
    maxRetries: config.LLM_MAX_RETRIES,
    guidedJsonFields: config.LLM_GUIDED_JSON_FIELDS,
    logger,
  });
  logger.info(
    {
      llm: {
        baseUrl: client.baseUrl,
        model: client.model,
        apiKey: config.LLM_API_KEY,
        concurrency: client.concurrency,
        timeoutMs: client.timeoutMs,
        maxRetries: client.maxRetries,
        guidedJsonFields: client.guidedJsonFields,
      },
    },
    "llm client ready",
  );
  return client;
}
