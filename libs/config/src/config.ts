import { z } from "zod";

/** Thrown once at start when an environment variable is missing or malformed; names every bad variable. */
export class ConfigError extends Error {
  constructor(
    readonly issues: { variable: string; message: string }[],
    service: string,
  ) {
    super(
      `invalid configuration for ${service}: ` +
        issues.map((i) => `${i.variable}: ${i.message}`).join("; "),
    );
    this.name = "ConfigError";
  }
}

/** An integer from a string variable, with bounds. */
export function envInt(opts: { min?: number; max?: number; default: number }) {
  let schema = z.coerce.number().int();
  if (opts.min !== undefined) schema = schema.min(opts.min);
  if (opts.max !== undefined) schema = schema.max(opts.max);
  return schema.default(opts.default);
}

/** "true"/"false"/"1"/"0"/"yes"/"no" → boolean. */
export function envBoolean(defaultValue: boolean) {
  return z
    .enum(["true", "false", "1", "0", "yes", "no"], { message: "expected true or false" })
    .transform((v) => v === "true" || v === "1" || v === "yes")
    .prefault(defaultValue ? "true" : "false");
}

/** A duration in milliseconds: "30000", "30s", "5m", "250ms", "1h". */
export function envDuration(defaultValue: string) {
  return z
    .string()
    .default(defaultValue)
    .transform((value, ctx) => {
      const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value.trim());
      if (!m) {
        ctx.addIssue({ code: "custom", message: `expected a duration like 500ms, 30s, 5m or 1h, got "${value}"` });
        return z.NEVER;
      }
      const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[(m[2] ?? "ms") as "ms" | "s" | "m" | "h"];
      return Math.round(Number(m[1]) * unit);
    });
}

/** A comma-separated list of non-empty strings. */
export function envList(defaultValue: string) {
  return z
    .string()
    .default(defaultValue)
    .transform((v) => v.split(",").map((s) => s.trim()).filter(Boolean));
}

/** Variables every service reads. Service schemas extend this object. */
export const baseServiceSchema = z.object({
  LOG_LEVEL: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info"),
  NATS_URL: envList("nats://127.0.0.1:4222"),
  RPC_HOST: z.string().min(1).default("127.0.0.1"),
  RPC_PORT: envInt({ min: 0, max: 65_535, default: 0 }),
  RPC_AUTH_TOKEN: z.string().min(16, "must be at least 16 characters").optional(),
  RPC_DEADLINE: envDuration("60s"),
  RPC_READ_MAX_BYTES: envInt({ min: 1024, default: 16 * 1024 * 1024 }),
  SHUTDOWN_TIMEOUT: envDuration("30s"),
});
export type BaseServiceConfig = z.infer<typeof baseServiceSchema>;

/**
 * Parse the environment once with a service's schema. Fails with a ConfigError that names each bad variable,
 * so a service refuses to start instead of running with a surprising value.
 */
export function loadConfig<S extends z.ZodType>(
  service: string,
  schema: S,
  env: Record<string, string | undefined> = process.env,
): z.infer<S> {
  // Treat empty strings as unset, so `FOO=` falls back to the default instead of failing oddly.
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ""));
  const result = schema.safeParse(cleaned);
  if (result.success) return result.data;
  throw new ConfigError(
    result.error.issues.map((issue) => ({
      variable: issue.path.map(String).join(".") || "(environment)",
      message: issue.message,
    })),
    service,
  );
}
