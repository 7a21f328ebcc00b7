/**
 * Guided JSON: which JSON Schemas the server can enforce. node-llama-cpp compiles a subset of JSON Schema to a
 * llama.cpp grammar and silently treats what it does not know as "any value", which would let output through that
 * the schema forbids. So a request's schema is checked first: a keyword or type the grammar cannot enforce is a 400
 * naming it and where it is, and `anyOf` (what zod emits for unions) becomes the grammar's `oneOf`.
 */
import { ModelServerError } from "./errors.js";

const TYPES = new Set(["string", "number", "integer", "boolean", "null", "object", "array"]);
const FORMATS = new Set(["date-time", "time", "date"]);
/** Keywords that describe and do not constrain; dropped before compiling. */
const ANNOTATIONS = new Set(["title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly", "strict"]);
const ENFORCED = new Set([
  "type",
  "properties",
  "required",
  "additionalProperties",
  "items",
  "prefixItems",
  "minItems",
  "maxItems",
  "minLength",
  "maxLength",
  "minProperties",
  "maxProperties",
  "enum",
  "const",
  "oneOf",
  "anyOf",
  "$defs",
  "$ref",
  "format",
]);

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** The schema as node-llama-cpp's grammar builder takes it; throws a 400 for what it could not enforce. */
export function grammarSchema(schema: unknown, param: string): Json {
  if (!isObject(schema)) throw new ModelServerError(400, `${param}: expected a JSON schema object`, { param });
  const defs = isObject(schema["$defs"]) ? schema["$defs"] : {};
  const fail = (where: string, what: string): never => {
    throw new ModelServerError(400, `${param}: ${what} at ${where || "the schema's root"}; the local model server cannot enforce it in its JSON grammar (it enforces ${[...ENFORCED].filter((k) => k !== "anyOf").join(", ")}, anyOf as oneOf, formats ${[...FORMATS].join("/")})`, { param });
  };

  function walk(node: unknown, where: string): Json {
    if (node === true || (isObject(node) && Object.keys(node).every((k) => ANNOTATIONS.has(k)))) return {};
    if (!isObject(node)) return fail(where, `a schema must be an object, got ${JSON.stringify(node)}`);
    const out: Json = {};
    for (const [key, value] of Object.entries(node)) {
      const at = where ? `${where}.${key}` : key;
      if (ANNOTATIONS.has(key)) continue;
      if (!ENFORCED.has(key)) fail(where, `the keyword "${key}"`);
      switch (key) {
        case "type": {
          const types = Array.isArray(value) ? value : [value];
          const bad = types.find((t) => typeof t !== "string" || !TYPES.has(t));
          if (bad !== undefined || types.length === 0) fail(at, `the type ${JSON.stringify(bad ?? value)} (expected ${[...TYPES].join(", ")})`);
          out[key] = value;
          break;
        }
        case "format":
          if (typeof value !== "string" || !FORMATS.has(value)) fail(at, `the format ${JSON.stringify(value)}`);
          out[key] = value;
          break;
        case "properties":
        case "$defs":
          if (!isObject(value)) fail(at, `"${key}" must be an object of schemas`);
          out[key] = Object.fromEntries(Object.entries(value as Json).map(([name, sub]) => [name, walk(sub, `${at}.${name}`)]));
          break;
        case "items":
        case "additionalProperties":
          out[key] = typeof value === "boolean" ? value : walk(value, at);
          break;
        case "prefixItems":
        case "oneOf":
        case "anyOf":
          if (!Array.isArray(value) || value.length === 0) fail(at, `"${key}" must be a non-empty array of schemas`);
          out[key === "anyOf" ? "oneOf" : key] = (value as unknown[]).map((sub, i) => walk(sub, `${at}[${i}]`));
          break;
        case "$ref": {
          const name = typeof value === "string" && value.startsWith("#/$defs/") ? value.slice("#/$defs/".length) : undefined;
          if (name === undefined || !(name in defs)) fail(at, `the reference ${JSON.stringify(value)} (only "#/$defs/<name>" of a defined name)`);
          out[key] = value;
          break;
        }
        case "enum":
          if (!Array.isArray(value) || value.length === 0) fail(at, `"enum" must be a non-empty array`);
          out[key] = value;
          break;
        case "required":
          if (!Array.isArray(value) || value.some((v) => typeof v !== "string")) fail(at, `"required" must be an array of property names`);
          out[key] = value;
          break;
        default:
          // const and the size bounds are taken as they are; node-llama-cpp validates their values.
          out[key] = value;
      }
    }
    return out;
  }

  return walk(schema, "");
}
