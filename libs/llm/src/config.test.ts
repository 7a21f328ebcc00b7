import { Writable } from "node:stream";
import { inspect } from "node:util";
import { baseServiceSchema, ConfigError, loadConfig } from "@ragtune/config";
import { createLogger } from "@ragtune/logger";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { llmClientFromConfig, llmConfigSchema } from "./config.js";
import { Secret } from "./secret.js";

function capture() {
  const lines: Record<string, unknown>[] = [];
  const raw: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      raw.push(chunk.toString());
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  return { logger: createLogger({ svc: "test", destination }), lines, raw };
}

describe("llmConfigSchema", () => {
  it("has defaults for everything but the key and the model", () => {
    const config = loadConfig("svc", llmConfigSchema, {});
    expect(config).toEqual({
      LLM_BASE_URL: "http://127.0.0.1:8000/v1",
      LLM_API_KEY: undefined,
      LLM_MODEL: undefined,
      LLM_CONCURRENCY: 32,
      LLM_TIMEOUT: 120_000,
      LLM_MAX_RETRIES: 4,
      LLM_GUIDED_JSON_FIELDS: ["response_format", "guided_json"],
    });
  });

  it("extends a service schema and reads every variable", () => {
    const schema = baseServiceSchema.extend(llmConfigSchema.shape).extend({ DATASET_X: z.string().default("x") });
    const config = loadConfig("dataset", schema, {
      LLM_BASE_URL: "https://vllm.internal:8000/v1",
      LLM_API_KEY: "sk-live-abc",
      LLM_MODEL: "mistral-7b",
      LLM_CONCURRENCY: "8",
      LLM_TIMEOUT: "90s",
      LLM_MAX_RETRIES: "0",
      LLM_GUIDED_JSON_FIELDS: "response_format, structured_outputs",
    });
    expect(config.LLM_API_KEY).toBeInstanceOf(Secret);
    expect(config.LLM_API_KEY!.reveal()).toBe("sk-live-abc");
    expect(config).toMatchObject({ LLM_MODEL: "mistral-7b", LLM_CONCURRENCY: 8, LLM_TIMEOUT: 90_000, LLM_MAX_RETRIES: 0, DATASET_X: "x" });
    expect(config.LLM_GUIDED_JSON_FIELDS).toEqual(["response_format", "structured_outputs"]);
  });

  it("names each bad variable", () => {
    const bad = {
      LLM_BASE_URL: "ftp://x",
      LLM_CONCURRENCY: "0",
      LLM_TIMEOUT: "soon",
      LLM_MAX_RETRIES: "-1",
      LLM_GUIDED_JSON_FIELDS: "response_format,json_mode",
    };
    let error: unknown;
    try {
      loadConfig("dataset", llmConfigSchema, bad);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).issues.map((i) => i.variable).sort()).toEqual(Object.keys(bad).sort());
    expect((error as ConfigError).message).toMatch(/LLM_GUIDED_JSON_FIELDS: expected a comma-separated list of response_format, guided_json, structured_outputs, got "json_mode"/);
    expect(() => loadConfig("x", llmConfigSchema, { LLM_TIMEOUT: "0s" })).toThrow(/LLM_TIMEOUT: must be longer than 0/);
  });

  it("never shows the API key: not when the config is logged, printed or serialized", () => {
    const config = loadConfig("svc", llmConfigSchema, { LLM_API_KEY: "sk-very-secret" });
    const { logger, raw } = capture();
    logger.info({ config }, "starting");
    logger.info({ key: config.LLM_API_KEY }, `key is ${String(config.LLM_API_KEY)}`);
    const everything = [...raw, JSON.stringify(config), inspect(config), `${config.LLM_API_KEY}`].join("\n");
    expect(everything).not.toContain("sk-very-secret");
    expect(raw[0]).toContain('"LLM_API_KEY":"[redacted]"');
  });

  it("llmClientFromConfig builds the client and logs where it points, key redacted", () => {
    const config = loadConfig("svc", llmConfigSchema, { LLM_BASE_URL: "http://10.0.0.5:8000", LLM_API_KEY: "sk-very-secret", LLM_CONCURRENCY: "4" });
    const { logger, lines, raw } = capture();
    const client = llmClientFromConfig(config, logger);
    expect(client).toMatchObject({ baseUrl: "http://10.0.0.5:8000/v1", concurrency: 4, timeoutMs: 120_000, maxRetries: 4 });
    expect(lines[0]).toMatchObject({ msg: "llm client ready", llm: { baseUrl: "http://10.0.0.5:8000/v1", apiKey: "[redacted]", concurrency: 4 } });
    expect(raw.join("")).not.toContain("sk-very-secret");
    expect(JSON.stringify(client) + inspect(client)).not.toContain("sk-very-secret");
  });
});
