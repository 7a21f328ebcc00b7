import { ConfigError } from "@ragtune/config";
import { describe, expect, it } from "vitest";
import { flagsToEnv, loadModelServerConfig, parseLoraModules, serverOptions } from "./config.js";

describe("model server config", () => {
  it("reads flags over MODEL_SERVER_* variables, --lora-modules in vLLM's forms", () => {
    const config = loadModelServerConfig(
      ["--model", "/m/model.gguf", "--lora-modules", "a=/x/a.gguf", "b=/x/b.gguf", "--port=9000", "--lora-modules", '{"name": "c", "path": "/x/c.gguf"}'],
      { MODEL_SERVER_PORT: "8100", MODEL_SERVER_CONCURRENCY: "8", MODEL_SERVER_API_KEY: "k" },
    );
    const options = serverOptions(config);
    expect(options).toMatchObject({ model: "/m/model.gguf", port: 9000, concurrency: 8, maxQueue: 64, contextSize: 2048, threads: 1, host: "127.0.0.1" });
    expect(options.loraModules).toEqual([
      { name: "a", path: "/x/a.gguf" },
      { name: "b", path: "/x/b.gguf" },
      { name: "c", path: "/x/c.gguf" },
    ]);
    expect(String(options.apiKey)).toBe("[redacted]");
  });

  it("fails naming the variable for a bad value, a missing model, an unknown flag or a bad adapter spec", () => {
    expect(() => loadModelServerConfig([], {})).toThrow(/MODEL_SERVER_MODEL: required/);
    expect(() => loadModelServerConfig(["--model", "m", "--port", "http"], {})).toThrow(ConfigError);
    expect(() => loadModelServerConfig(["--model", "m", "--port", "http"], {})).toThrow(/MODEL_SERVER_PORT/);
    expect(() => flagsToEnv(["--gpu"])).toThrow(/--gpu: unknown argument/);
    expect(() => flagsToEnv(["--model"])).toThrow(/--model: needs a value/);
    expect(() => loadModelServerConfig(["--model", "m", "--lora-modules", "noequals"], {})).toThrow(/MODEL_SERVER_LORA_MODULES: expected name=path/);
    expect(() => loadModelServerConfig(["--model", "m", "--lora-modules", "a=/1", "a=/2"], {})).toThrow(/"a" is given twice/);
    expect(parseLoraModules("a=/p=q")).toEqual([{ name: "a", path: "/p=q" }]);
  });
});
