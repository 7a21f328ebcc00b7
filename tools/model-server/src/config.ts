/**
 * The server's settings: MODEL_SERVER_* environment variables, each also a command-line flag (flags win), parsed
 * once by the project's config loader so a bad value fails at start naming the variable and its flag.
 */
import { ConfigError, envInt, loadConfig } from "@ragtune/config";
import { Secret } from "@ragtune/llm";
import { z } from "zod";
import { DEFAULTS, type LoraModule, type ModelServerOptions } from "./model-server.js";

/** `name=path` (vLLM's form) or `{"name": …, "path": …}` (its JSON form), several separated by spaces or commas. */
export function parseLoraModules(value: string): LoraModule[] {
  return splitItems(value).map((item) => {
    if (item.startsWith("{")) {
      let json: unknown;
      try {
        json = JSON.parse(item);
      } catch {
        json = undefined;
      }
      const parsed = z.object({ name: z.string().min(1), path: z.string().min(1) }).safeParse(json);
      if (!parsed.success) throw new Error(`expected {"name": "...", "path": "..."}, got ${item}`);
      return parsed.data;
    }
    const eq = item.indexOf("=");
    if (eq <= 0 || eq === item.length - 1) throw new Error(`expected name=path, got "${item}"`);
    return { name: item.slice(0, eq), path: item.slice(eq + 1) };
  });
}

/** Words separated by spaces or commas, a `{...}` JSON object counting as one word. */
function splitItems(value: string): string[] {
  const items: string[] = [];
  let i = 0;
  while (i < value.length) {
    if (/[\s,]/.test(value[i]!)) {
      i++;
      continue;
    }
    let end = i;
    if (value[i] === "{") {
      let depth = 0;
      for (; end < value.length; end++) {
        if (value[end] === "{") depth++;
        else if (value[end] === "}" && --depth === 0) break;
      }
      end = Math.min(end + 1, value.length);
    } else {
      while (end < value.length && !/[\s,]/.test(value[end]!)) end++;
    }
    items.push(value.slice(i, end));
    i = end;
  }
  return items;
}

const loraModules = z
  .string()
  .optional()
  .transform((value, ctx) => {
    if (value === undefined) return [];
    try {
      const modules = parseLoraModules(value);
      const names = modules.map((m) => m.name);
      const twice = names.find((n, i) => names.indexOf(n) !== i);
      if (twice !== undefined) throw new Error(`adapter name "${twice}" is given twice`);
      return modules;
    } catch (error) {
      ctx.addIssue({ code: "custom", message: (error as Error).message });
      return z.NEVER;
    }
  });

export const modelServerConfigSchema = z.object({
  LOG_LEVEL: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info"),
  /** The base model, a GGUF file. */
  MODEL_SERVER_MODEL: z.string({ message: "required: the base model's GGUF file (--model)" }).min(1),
  /** Name of the base model in requests (default: MODEL_SERVER_MODEL as given). */
  MODEL_SERVER_SERVED_MODEL_NAME: z.string().min(1).optional(),
  MODEL_SERVER_LORA_MODULES: loraModules,
  MODEL_SERVER_HOST: z.string().min(1).default(DEFAULTS.host),
  MODEL_SERVER_PORT: envInt({ min: 0, max: 65_535, default: DEFAULTS.port }),
  MODEL_SERVER_CONCURRENCY: envInt({ min: 1, max: 256, default: DEFAULTS.concurrency }),
  MODEL_SERVER_MAX_QUEUE: envInt({ min: 0, max: 100_000, default: DEFAULTS.maxQueue }),
  MODEL_SERVER_CONTEXT_SIZE: envInt({ min: 16, max: 1_048_576, default: DEFAULTS.contextSize }),
  MODEL_SERVER_THREADS: envInt({ min: 1, max: 1024, default: DEFAULTS.threads }),
  MODEL_SERVER_STREAM_INTERVAL_MS: envInt({ min: 0, max: 10_000, default: DEFAULTS.streamIntervalMs }),
  MODEL_SERVER_API_KEY: z
    .string()
    .optional()
    .transform((value) => (value === undefined ? undefined : new Secret(value))),
});

export type ModelServerConfig = z.infer<typeof modelServerConfigSchema>;

/** Command-line flags and the variable each sets. */
export const FLAGS: Record<string, keyof ModelServerConfig> = {
  "--model": "MODEL_SERVER_MODEL",
  "--served-model-name": "MODEL_SERVER_SERVED_MODEL_NAME",
  "--lora-modules": "MODEL_SERVER_LORA_MODULES",
  "--host": "MODEL_SERVER_HOST",
  "--port": "MODEL_SERVER_PORT",
  "--concurrency": "MODEL_SERVER_CONCURRENCY",
  "--max-queue": "MODEL_SERVER_MAX_QUEUE",
  "--context-size": "MODEL_SERVER_CONTEXT_SIZE",
  "--threads": "MODEL_SERVER_THREADS",
  "--stream-interval-ms": "MODEL_SERVER_STREAM_INTERVAL_MS",
  "--api-key": "MODEL_SERVER_API_KEY",
};

/**
 * Flags as variables: `--port 8000` and `--port=8000`; `--lora-modules` takes every following word up to the next
 * flag (vLLM's form: `--lora-modules a=/x.gguf b=/y.gguf`) and may be repeated.
 */
export function flagsToEnv(argv: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [flag, inline] = arg.includes("=") && arg.startsWith("--") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, undefined];
    const variable = FLAGS[flag];
    if (variable === undefined) {
      throw new ConfigError([{ variable: flag, message: `unknown argument; flags: ${Object.keys(FLAGS).join(" ")}` }], "model-server");
    }
    const values: string[] = [];
    if (inline !== undefined) values.push(inline);
    else if (variable === "MODEL_SERVER_LORA_MODULES") {
      while (i + 1 < argv.length && !argv[i + 1]!.startsWith("--")) values.push(argv[++i]!);
    } else if (i + 1 < argv.length) values.push(argv[++i]!);
    if (values.length === 0) throw new ConfigError([{ variable: flag, message: "needs a value" }], "model-server");
    env[variable] = variable === "MODEL_SERVER_LORA_MODULES" && env[variable] ? `${env[variable]} ${values.join(" ")}` : values.join(" ");
  }
  return env;
}

/** The config from the environment with the flags over it. */
export function loadModelServerConfig(argv: string[], env: Record<string, string | undefined> = process.env): ModelServerConfig {
  return loadConfig("model-server", modelServerConfigSchema, { ...env, ...flagsToEnv(argv) });
}

/** startModelServer's options for a parsed config. */
export function serverOptions(config: ModelServerConfig): ModelServerOptions {
  return {
    model: config.MODEL_SERVER_MODEL,
    ...(config.MODEL_SERVER_SERVED_MODEL_NAME === undefined ? {} : { servedModelName: config.MODEL_SERVER_SERVED_MODEL_NAME }),
    loraModules: config.MODEL_SERVER_LORA_MODULES,
    host: config.MODEL_SERVER_HOST,
    port: config.MODEL_SERVER_PORT,
    concurrency: config.MODEL_SERVER_CONCURRENCY,
    maxQueue: config.MODEL_SERVER_MAX_QUEUE,
    contextSize: config.MODEL_SERVER_CONTEXT_SIZE,
    threads: config.MODEL_SERVER_THREADS,
    streamIntervalMs: config.MODEL_SERVER_STREAM_INTERVAL_MS,
    ...(config.MODEL_SERVER_API_KEY === undefined ? {} : { apiKey: config.MODEL_SERVER_API_KEY }),
  };
}
