/**
 * Request bodies of the OpenAI/vLLM endpoints the server speaks, validated with zod. A bad field is a 400 naming
 * the field and what it expects; fields the server does not know are ignored, as vLLM ignores them.
 */
import { z } from "zod";
import { ModelServerError } from "./errors.js";

const MAX_STOP_STRINGS = 16;

const stop = z
  .union([z.string().min(1, "a stop string must not be empty"), z.array(z.string().min(1, "a stop string must not be empty")).max(MAX_STOP_STRINGS)])
  .nullish()
  .transform((value) => (value == null ? [] : typeof value === "string" ? [value] : value));

const jsonSchemaObject = z.record(z.string(), z.unknown());

/** A schema given as an object, or (as vLLM also accepts for guided_json) as a JSON string. */
const schemaValue = z.union([
  jsonSchemaObject,
  z.string().transform((text, ctx) => {
    try {
      const parsed: unknown = JSON.parse(text);
      if (parsed !== null && typeof parsed === "object" && !Array.isArray(parsed)) return parsed as Record<string, unknown>;
    } catch {
      // reported below
    }
    ctx.addIssue({ code: "custom", message: "expected a JSON schema object (or a string holding one)" });
    return z.NEVER;
  }),
]);

const responseFormat = z
  .discriminatedUnion("type", [
    z.object({ type: z.literal("text") }),
    z.object({ type: z.literal("json_object") }),
    z.object({
      type: z.literal("json_schema"),
      json_schema: z.object({
        name: z.string().optional(),
        schema: jsonSchemaObject,
        strict: z.boolean().nullish(),
      }),
    }),
  ])
  .nullish();

const sampling = {
  model: z.string().min(1).nullish(),
  max_tokens: z.number().int().min(1, "must be at least 1").nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0, "must be greater than 0").max(1).nullish(),
  seed: z.number().int().nullish(),
  stop,
  /** vLLM's: keep generating past the end-of-sequence token, up to max_tokens. */
  ignore_eos: z.boolean().nullish(),
  n: z.literal(1, "the local model server generates one choice per request (n = 1)").nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  response_format: responseFormat,
  guided_json: schemaValue.nullish(),
  structured_outputs: z.object({ json: schemaValue.nullish() }).nullish(),
  logprobs: z.union([z.null(), z.literal(false), z.undefined()], "logprobs are not supported by the local model server").optional(),
};

const completionBody = z.object({
  ...sampling,
  prompt: z.union([z.string(), z.array(z.string())], "expected a string").transform((prompt, ctx) => {
    if (typeof prompt === "string") return prompt;
    if (prompt.length === 1) return prompt[0]!;
    ctx.addIssue({ code: "custom", message: `the local model server takes one prompt per request, got ${prompt.length}` });
    return z.NEVER;
  }),
  echo: z.union([z.literal(false), z.null()], "echo is not supported by the local model server").optional(),
});

const textPart = z.object({ type: z.literal("text"), text: z.string() });
const message = z.object({
  role: z.enum(["system", "user", "assistant"], "expected one of system, user, assistant"),
  content: z.union([z.string(), z.array(textPart).transform((parts) => parts.map((p) => p.text).join(""))]),
});

const chatBody = z.object({
  ...sampling,
  messages: z.array(message).min(1, "must hold at least one message"),
  max_completion_tokens: z.number().int().min(1, "must be at least 1").nullish(),
});

const loadAdapterBody = z.object({
  lora_name: z.string().min(1, "must not be empty"),
  lora_path: z.string().min(1, "must not be empty"),
});

const unloadAdapterBody = z.object({
  lora_name: z.string().min(1, "must not be empty"),
  lora_int_id: z.number().int().nullish(),
});

/** What guided decoding asks for: a JSON schema, any JSON object, or nothing. */
export type Guided = { kind: "schema"; schema: Record<string, unknown>; param: string } | { kind: "json_object" } | undefined;

export interface SamplingRequest {
  model: string | undefined;
  maxTokens: number | undefined;
  temperature: number;
  topP: number;
  seed: number | undefined;
  stop: string[];
  ignoreEos: boolean;
  stream: boolean;
  includeUsage: boolean;
  guided: Guided;
}

export interface CompletionRequest extends SamplingRequest {
  prompt: string;
}

export interface ChatRequest extends SamplingRequest {
  messages: { role: "system" | "user" | "assistant"; content: string }[];
}

function parse<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new ModelServerError(400, "the request body must be a JSON object");
  }
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const param = issue.path.map(String).join(".");
  const detail = result.error.issues
    .slice(0, 3)
    .map((i) => `${i.path.map(String).join(".") || "(body)"}: ${i.message}`)
    .join("; ");
  throw new ModelServerError(400, detail, param === "" ? {} : { param });
}

type Sampling = z.output<z.ZodObject<typeof sampling>>;

function guidedOf(body: Sampling): Guided {
  const format = body.response_format;
  if (format?.type === "json_schema") return { kind: "schema", schema: format.json_schema.schema, param: "response_format.json_schema.schema" };
  if (body.structured_outputs?.json != null) return { kind: "schema", schema: body.structured_outputs.json, param: "structured_outputs.json" };
  if (body.guided_json != null) return { kind: "schema", schema: body.guided_json, param: "guided_json" };
  if (format?.type === "json_object") return { kind: "json_object" };
  return undefined;
}

function samplingOf(body: Sampling, maxTokens: number | null | undefined): SamplingRequest {
  return {
    model: body.model ?? undefined,
    maxTokens: maxTokens ?? undefined,
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    seed: body.seed ?? undefined,
    stop: body.stop,
    ignoreEos: body.ignore_eos ?? false,
    stream: body.stream ?? false,
    includeUsage: body.stream_options?.include_usage ?? false,
    guided: guidedOf(body),
  };
}

export function parseCompletionRequest(body: unknown): CompletionRequest {
  const parsed = parse(completionBody, body);
  return { ...samplingOf(parsed, parsed.max_tokens), prompt: parsed.prompt };
}

export function parseChatRequest(body: unknown): ChatRequest {
  const parsed = parse(chatBody, body);
  return { ...samplingOf(parsed, parsed.max_completion_tokens ?? parsed.max_tokens), messages: parsed.messages };
}

export function parseLoadAdapterRequest(body: unknown): { name: string; path: string } {
  const parsed = parse(loadAdapterBody, body);
  return { name: parsed.lora_name, path: parsed.lora_path };
}

export function parseUnloadAdapterRequest(body: unknown): { name: string } {
  return { name: parse(unloadAdapterBody, body).lora_name };
}
