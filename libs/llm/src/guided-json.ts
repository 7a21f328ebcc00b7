import { z } from "zod";
import { LlmError } from "./errors.js";
import type { GuidedJson } from "./protocol.js";

const NAME = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_SHOWN = 200;
// Deriving a JSON Schema costs about as much CPU as the rest of a call; schemas are few and long-lived.
const derived = new WeakMap<z.ZodType, Record<string, unknown>>();

function jsonSchemaOf(schema: z.ZodType): Record<string, unknown> {
  let json = derived.get(schema);
  if (json === undefined) {
    const { $schema: _dialect, ...rest } = z.toJSONSchema(schema) as Record<string, unknown>;
    json = rest;
    derived.set(schema, json);
  }
  return json;
}

/**
 * The guided-JSON spec for a zod schema: its JSON Schema (draft 2020-12, `additionalProperties: false` on objects,
 * which strict mode needs and which keeps a constrained model from inventing keys). `jsonSchema` replaces the
 * derived schema where a zod type has no JSON Schema form (transforms, custom refinements).
 */
export function guidedJsonFor(
  name: string,
  schema: z.ZodType,
  options: { strict?: boolean; jsonSchema?: Record<string, unknown> } = {},
): GuidedJson {
  if (!NAME.test(name)) throw new RangeError(`schema name "${name}" must be 1-64 letters, digits, "_" or "-"`);
  return { name, schema: options.jsonSchema ?? jsonSchemaOf(schema), strict: options.strict ?? true };
}

function excerpt(text: string): string {
  const flat = JSON.stringify(text.length > MAX_SHOWN ? `${text.slice(0, MAX_SHOWN)}…` : text);
  return `${flat} (${text.length} chars)`;
}

/**
 * The model's output as a value of `schema`. Output that is not JSON, or JSON that does not match, is a retryable
 * `malformed_json` LlmError saying which, with where the schema failed.
 */
export function parseJsonOutput<S extends z.ZodType>(
  text: string,
  schema: S,
  context: { path: string; name: string; finishReason: string | null },
): z.output<S> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    const cut = context.finishReason === "length" ? "; generation stopped at max_tokens, raise it" : "";
    throw new LlmError(
      "malformed_json",
      `${context.path}: the model's output is not valid JSON (${(error as Error).message})${cut}: ${excerpt(text)}`,
      { cause: error },
    );
  }
  const result = schema.safeParse(parsed);
  if (!result.success) {
    throw new LlmError(
      "malformed_json",
      `${context.path}: the model's output does not match schema "${context.name}": ${z.prettifyError(result.error).replaceAll("\n", " ")}`,
      { cause: result.error },
    );
  }
  return result.data;
}
