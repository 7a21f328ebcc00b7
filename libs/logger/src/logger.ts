import { pino, type Logger, type DestinationStream } from "pino";

export type { Logger };

/** Field paths whose values never reach a log line (API keys, tokens, credentials). */
export const REDACT_PATHS = [
  "apiKey",
  "*.apiKey",
  "token",
  "*.token",
  "password",
  "*.password",
  "authorization",
  "*.authorization",
  "headers.authorization",
  "req.headers.authorization",
  "*.headers.authorization",
  "config.llmApiKey",
  "config.natsToken",
];

export interface LoggerOptions {
  /** Service or tool name, added to every line as `svc`. */
  svc: string;
  /** pino level; defaults to LOG_LEVEL or "info". */
  level?: string;
  /** Where lines go; defaults to stdout. Tests pass a stream to read lines back. */
  destination?: DestinationStream;
}

/**
 * The one root logger of a process: pino JSON lines, secrets redacted.
 * Subsystems take `logger.child({ ... })` of it.
 */
export function createLogger(options: LoggerOptions): Logger {
  return pino(
    {
      level: options.level ?? process.env.LOG_LEVEL ?? "info",
      base: { svc: options.svc, pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination ?? pino.destination({ fd: 1, sync: false }),
  );
}
