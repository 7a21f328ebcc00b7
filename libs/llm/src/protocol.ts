/**
 * The subset of the OpenAI API the client speaks (as vLLM's OpenAI-compatible server and the project's local model
 * server implement it): request bodies from camelCase options, and tolerant readers of the responses.
 */
import { LlmError } from "./errors.js";

export type ChatRole = "system" | "user" | "assistant";

export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/** Sampling and routing options shared by every generation call. */
export interface GenerationOptions {
  /** Base model or LoRA adapter name (vLLM selects the adapter by `model`); default: the client's model. */
  model?: string;
  temperature?: number;
  topP?: number;
  seed?: number;
  maxTokens?: number;
  stop?: string | string[];
  /**
   * Fields merged into the request body as they are, for server-specific parameters (vLLM's `top_k`,
   * `repetition_penalty`, ...). The options above win over a field of the same name.
   */
  extraBody?: Record<string, unknown>;
}

/** Where the guided-JSON schema goes in the request body. */
export type GuidedJsonField =
  /** OpenAI's `response_format: {type: "json_schema", json_schema: {name, schema, strict}}`; vLLM honours it on
   * /v1/chat/completions, and on /v1/completions since it moved to `structured_outputs` (0.10.2). */
  | "response_format"
  /** vLLM's `guided_json: <schema>` (both endpoints up to vLLM 0.11; ignored, with a warning, from 0.12). */
  | "guided_json"
  /** vLLM's `structured_outputs: {json: <schema>}` (0.10.2 and later). */
  | "structured_outputs";

export const GUIDED_JSON_FIELDS: readonly GuidedJsonField[] = ["response_format", "guided_json", "structured_outputs"];
/** Both the OpenAI field and vLLM's own: every vLLM version and OpenAI-compatible server finds one it reads. */
export const DEFAULT_GUIDED_JSON_FIELDS: readonly GuidedJsonField[] = ["response_format", "guided_json"];

/** A JSON schema the server must constrain its output to. */
export interface GuidedJson {
  /** Schema name (OpenAI requires one: letters, digits, `_` and `-`, up to 64). */
  name: string;
  schema: Record<string, unknown>;
  /** OpenAI's strict mode (default true). */
  strict?: boolean;
}

export interface GuidedOptions {
  guidedJson?: GuidedJson;
  /** Which request field(s) carry `guidedJson`; default: the client's `guidedJsonFields`. */
  guidedJsonFields?: readonly GuidedJsonField[];
}

export interface ChatRequest extends GenerationOptions, GuidedOptions {
  messages: ChatMessage[];
}

export interface CompletionRequest extends GenerationOptions, GuidedOptions {
  prompt: string;
}

export interface TokenUsage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
}

/** A model the server serves: a base model, or a LoRA adapter (vLLM sets `parent` to its base model). */
export interface ModelInfo {
  id: string;
  ownedBy?: string;
  root?: string;
  parent?: string;
  maxModelLen?: number;
}

export type Endpoint = "chat" | "completion";

export const PATHS = {
  chat: "/v1/chat/completions",
  completion: "/v1/completions",
  models: "/v1/models",
  loadLora: "/v1/load_lora_adapter",
  unloadLora: "/v1/unload_lora_adapter",
} as const;

export interface BodyDefaults {
  model?: string;
  guidedJsonFields: readonly GuidedJsonField[];
}

/** The JSON body of a chat or completion request. */
export function requestBody(
  endpoint: Endpoint,
  request: ChatRequest | CompletionRequest,
  defaults: BodyDefaults,
  stream: { includeUsage: boolean } | undefined,
): Record<string, unknown> {
  const body: Record<string, unknown> = { ...request.extraBody };
  const model = request.model ?? defaults.model;
  if (model !== undefined) body["model"] = model;
  if (endpoint === "chat") body["messages"] = (request as ChatRequest).messages;
  else body["prompt"] = (request as CompletionRequest).prompt;
  if (request.temperature !== undefined) body["temperature"] = request.temperature;
  if (request.topP !== undefined) body["top_p"] = request.topP;
  if (request.seed !== undefined) body["seed"] = request.seed;
  if (request.maxTokens !== undefined) body["max_tokens"] = request.maxTokens;
  if (request.stop !== undefined) body["stop"] = request.stop;
  if (request.guidedJson) {
    Object.assign(body, guidedJsonFields(request.guidedJson, request.guidedJsonFields ?? defaults.guidedJsonFields));
  }
  if (stream) {
    body["stream"] = true;
    if (stream.includeUsage) body["stream_options"] = { include_usage: true };
  } else {
    body["stream"] = false;
  }
  return body;
}

/** The request fields that carry a guided-JSON schema. */
export function guidedJsonFields(guided: GuidedJson, fields: readonly GuidedJsonField[]): Record<string, unknown> {
  if (fields.length === 0) throw new RangeError("guidedJsonFields must name at least one field");
  const out: Record<string, unknown> = {};
  for (const field of fields) {
    if (field === "response_format") {
      out["response_format"] = {
        type: "json_schema",
        json_schema: { name: guided.name, schema: guided.schema, strict: guided.strict ?? true },
      };
    } else if (field === "guided_json") {
      out["guided_json"] = guided.schema;
    } else if (field === "structured_outputs") {
      out["structured_outputs"] = { json: guided.schema };
    } else {
      throw new RangeError(`unknown guided JSON field "${String(field)}" (expected one of ${GUIDED_JSON_FIELDS.join(", ")})`);
    }
  }
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function count(value: unknown): number {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : 0;
}

/** `usage` of a response or stream chunk; undefined when absent. */
export function parseUsage(value: unknown): TokenUsage | undefined {
  if (!isObject(value)) return undefined;
  const promptTokens = count(value["prompt_tokens"]);
  const completionTokens = count(value["completion_tokens"]);
  const total = value["total_tokens"];
  return { promptTokens, completionTokens, totalTokens: typeof total === "number" ? total : promptTokens + completionTokens };
}

const ZERO_USAGE: TokenUsage = { promptTokens: 0, completionTokens: 0, totalTokens: 0 };

export interface ParsedGeneration {
  text: string;
  finishReason: string | null;
  model: string;
  /** Zero counts when the server reported none. */
  usage: TokenUsage;
}

function unusable(path: string, what: string): LlmError {
  return new LlmError("malformed_json", `${path}: the server's response ${what}`);
}

/** The first choice of a non-streaming chat or completion response. */
export function parseGeneration(endpoint: Endpoint, body: unknown): ParsedGeneration {
  const path = PATHS[endpoint];
  if (!isObject(body)) throw unusable(path, "is not a JSON object");
  const choices = body["choices"];
  if (!Array.isArray(choices) || choices.length === 0 || !isObject(choices[0])) throw unusable(path, "has no choices");
  const choice = choices[0];
  let text: unknown;
  if (endpoint === "chat") {
    const message = choice["message"];
    if (!isObject(message)) throw unusable(path, "has no message in its first choice");
    text = message["content"] ?? "";
  } else {
    text = choice["text"];
  }
  if (typeof text !== "string") throw unusable(path, "has no text in its first choice");
  const finish = choice["finish_reason"];
  return {
    text,
    finishReason: typeof finish === "string" ? finish : null,
    model: typeof body["model"] === "string" ? body["model"] : "",
    usage: parseUsage(body["usage"]) ?? ZERO_USAGE,
  };
}

export interface ParsedChunk {
  /** Text added by this chunk (choice 0). */
  text: string;
  finishReason: string | null;
  model: string | undefined;
  /** Present on the chunk that reports usage (vLLM/OpenAI send it last, with `choices: []`). */
  usage: TokenUsage | undefined;
}

/** One `data:` payload of a streaming response. */
export function parseChunk(endpoint: Endpoint, body: unknown): ParsedChunk {
  const path = PATHS[endpoint];
  if (!isObject(body)) throw unusable(path, "stream sent a chunk that is not a JSON object");
  if (body["error"] !== undefined) {
    const error = body["error"];
    const message = isObject(error) && typeof error["message"] === "string" ? error["message"] : JSON.stringify(error);
    throw new LlmError("server_error", `${path}: the server reported an error mid-stream: ${message}`, { serverMessage: message });
  }
  const choices = Array.isArray(body["choices"]) ? body["choices"] : [];
  const choice = choices.find((c): c is Record<string, unknown> => isObject(c) && (c["index"] ?? 0) === 0);
  let text: unknown = "";
  if (choice) {
    if (endpoint === "chat") text = isObject(choice["delta"]) ? (choice["delta"]["content"] ?? "") : "";
    else text = choice["text"] ?? "";
  }
  if (typeof text !== "string") throw unusable(path, "stream sent a chunk whose text is not a string");
  const finish = choice?.["finish_reason"];
  return {
    text,
    finishReason: typeof finish === "string" ? finish : null,
    model: typeof body["model"] === "string" ? body["model"] : undefined,
    usage: parseUsage(body["usage"]),
  };
}

/** The `data` list of GET /v1/models. */
export function parseModels(body: unknown): ModelInfo[] {
  if (!isObject(body) || !Array.isArray(body["data"])) throw unusable(PATHS.models, "has no data list");
  return body["data"].filter(isObject).flatMap((m): ModelInfo[] => {
    if (typeof m["id"] !== "string") return [];
    const info: ModelInfo = { id: m["id"] };
    if (typeof m["owned_by"] === "string") info.ownedBy = m["owned_by"];
    if (typeof m["root"] === "string") info.root = m["root"];
    if (typeof m["parent"] === "string") info.parent = m["parent"];
    if (typeof m["max_model_len"] === "number") info.maxModelLen = m["max_model_len"];
    return [info];
  });
}
