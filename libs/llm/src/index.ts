export {
  createLlmClient,
  LlmClient,
  LlmStream,
  type CallLatency,
  type CallOptions,
  type GenerationResult,
  type JsonRequest,
  type JsonResult,
  type LlmClientOptions,
  type LlmStats,
  type ModelsResult,
  type RetryEvent,
  type StreamDelta,
  type StreamLatency,
  type StreamResult,
} from "./client.js";
// The FIFO slot limiter is shared with the local model server (tools/model-server), which admits requests with it.
export { ConcurrencyLimiter, type Release } from "./concurrency-limiter.js";
export { llmClientFromConfig, llmConfigSchema, type LlmConfig } from "./config.js";
export { isLlmError, LlmError, type LlmErrorKind } from "./errors.js";
export { guidedJsonFor } from "./guided-json.js";
export {
  DEFAULT_GUIDED_JSON_FIELDS,
  GUIDED_JSON_FIELDS,
  type ChatMessage,
  type ChatRequest,
  type ChatRole,
  type CompletionRequest,
  type GenerationOptions,
  type GuidedJson,
  type GuidedJsonField,
  type ModelInfo,
  type TokenUsage,
} from "./protocol.js";
export { Secret } from "./secret.js";
