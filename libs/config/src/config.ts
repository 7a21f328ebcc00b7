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

const DURATION_UNITS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** A duration in milliseconds: "30000", "30s", "5m", "250ms", "1h", "30d". */
export function envDuration(defaultValue: string) {
  return z
    .string()
    .default(defaultValue)
    .transform((value, ctx) => {
      const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(value.trim());
      if (!m) {
        ctx.addIssue({ code: "custom", message: `expected a duration like 500ms, 30s, 5m, 1h or 30d, got "${value}"` });
        return z.NEVER;
      }
      return Math.round(Number(m[1]) * DURATION_UNITS[(m[2] ?? "ms") as keyof typeof DURATION_UNITS]);
    });
}

const BYTE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  k: 1024,
  ki: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mi: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gi: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  ti: 1024 ** 4,
  tib: 1024 ** 4,
};

/**
 * A size in bytes: "1048576", "512Mi", "20GiB", "1.5G" (K/M/G/T, Ki/Mi/Gi/Ti and KiB/MiB/GiB/TiB are powers of
 * 1024; KB/MB/GB/TB powers of 1000). Unset means unlimited, returned as -1 (JetStream's "no limit").
 */
export function envBytes() {
  return z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined) return -1;
      const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(value.trim());
      const unit = m ? BYTE_UNITS[m[2]!.toLowerCase()] : undefined;
      const bytes = m && unit !== undefined ? Math.floor(Number(m[1]) * unit) : NaN;
      if (!Number.isSafeInteger(bytes) || bytes < 1) {
        ctx.addIssue({ code: "custom", message: `expected a size like 1048576, 512Mi or 20Gi (leave unset for no limit), got "${value}"` });
        return z.NEVER;
      }
      return bytes;
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
export const baseServiceSchema = z
  .object({
    LOG_LEVEL: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info"),
    // NATS: where, how to authenticate (at most one of user/password, token, creds file), how many copies
    // of every stream and bucket, and how much the JetStream volumes may hold (unset = no limit).
    NATS_URL: envList("nats://127.0.0.1:4222"),
    /** Copies of each stream, KV bucket and object store across the NATS cluster (3 on a 3-node cluster). */
    NATS_REPLICAS: envInt({ min: 1, max: 5, default: 1 }),
    NATS_USER: z.string().optional(),
    NATS_PASSWORD: z.string().optional(),
    NATS_TOKEN: z.string().optional(),
    /** A NATS `.creds` file (user JWT + nkey seed), for servers run in operator mode. */
    NATS_CREDS_FILE: z.string().optional(),
    /** Events (the RAGTUNE stream and event histories) older than this are dropped; unset = kept forever. */
    NATS_EVENTS_MAX_AGE: envDuration("0"),
    /** Size limit of each events stream; past it the oldest events are dropped. */
    NATS_EVENTS_MAX_BYTES: envBytes(),
    /** Size limit of each KV bucket (run records, checkpoints, ...); a full bucket refuses writes. */
    NATS_KV_MAX_BYTES: envBytes(),
    /** Size limit of each artifact bucket (object store: inline inputs, chunk sets, adapters); a full one refuses puts. */
    NATS_ARTIFACTS_MAX_BYTES: envBytes(),
    RPC_HOST: z.string().min(1).default("127.0.0.1"),
    RPC_PORT: envInt({ min: 0, max: 65_535, default: 0 }),
    RPC_AUTH_TOKEN: z.string().min(16, "must be at least 16 characters").optional(),
    RPC_DEADLINE: envDuration("60s"),
    RPC_READ_MAX_BYTES: envInt({ min: 1024, default: 16 * 1024 * 1024 }),
    SHUTDOWN_TIMEOUT: envDuration("30s"),
  })
  .superRefine((c, ctx) => {
    const fail = (variable: string, message: string) => ctx.addIssue({ code: "custom", path: [variable], message });
    if (c.NATS_USER !== undefined && c.NATS_PASSWORD === undefined) fail("NATS_PASSWORD", "required when NATS_USER is set");
    if (c.NATS_PASSWORD !== undefined && c.NATS_USER === undefined) fail("NATS_USER", "required when NATS_PASSWORD is set");
    const methods = [
      c.NATS_USER !== undefined || c.NATS_PASSWORD !== undefined ? "NATS_USER/NATS_PASSWORD" : undefined,
      c.NATS_TOKEN !== undefined ? "NATS_TOKEN" : undefined,
      c.NATS_CREDS_FILE !== undefined ? "NATS_CREDS_FILE" : undefined,
    ].filter((m) => m !== undefined);
    if (methods.length > 1) {
      fail(methods.at(-1)!, `set only one way to authenticate to NATS, not ${methods.join(" and ")}`);
    }
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
