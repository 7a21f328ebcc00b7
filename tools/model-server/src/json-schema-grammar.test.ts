import { describe, expect, it } from "vitest";
import { z } from "zod";
import { ModelServerError } from "./errors.js";
import { grammarSchema } from "./json-schema-grammar.js";

function error(schema: unknown): ModelServerError {
  try {
    grammarSchema(schema, "guided_json");
  } catch (e) {
    return e as ModelServerError;
  }
  throw new Error("expected a rejection");
}

describe("grammarSchema", () => {
  it("takes what zod emits for objects, strings with bounds, enums, arrays and unions (anyOf becomes oneOf)", () => {
    const schema = z.toJSONSchema(
      z.object({ answer: z.string().max(40), kind: z.enum(["a", "b"]), tags: z.array(z.string()).max(3), n: z.union([z.number(), z.object({ x: z.boolean() })]) }),
    );
    const out = grammarSchema(schema, "guided_json");
    expect(out).not.toHaveProperty("$schema");
    expect((out["properties"] as any).n).toEqual({ oneOf: [{ type: "number" }, { type: "object", properties: { x: { type: "boolean" } }, required: ["x"], additionalProperties: false }] });
    expect((out["properties"] as any).answer).toEqual({ type: "string", maxLength: 40 });
  });

  it("refuses what the grammar cannot enforce, naming the keyword and where", () => {
    expect(error({ type: "object", properties: { a: { type: "string", pattern: "x+" } } }).message).toMatch(
      /^guided_json: the keyword "pattern" at properties\.a; the local model server cannot enforce it/,
    );
    expect(error({ type: "wat" }).message).toMatch(/the type "wat"/);
    expect(error({ type: "number", minimum: 0 }).message).toMatch(/"minimum"/);
    expect(error({ type: "string", format: "email" }).message).toMatch(/the format "email"/);
    expect(error({ properties: { a: { $ref: "#/$defs/missing" } } }).message).toMatch(/the reference "#\/\$defs\/missing"/);
    expect(error([1]).status).toBe(400);
  });
});
