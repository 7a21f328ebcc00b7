import { pino, type Logger, type DestinationStream } from "pino";

export type { Logger };

/**
 * Keys whose values never reach a log line (API keys, tokens, credentials): at the top of a logged object or a child
 * logger's bindings and in the objects and errors under them, two levels deep (`apiKey`, `config.llmApiKey`,
 * `req.headers.authorization`, `err.token`).
 */
export const SECRET_KEYS: ReadonlySet<string> = new Set(["apiKey", "token", "password", "authorization", "llmApiKey", "natsToken"]);
const CENSOR = "[redacted]";
/** Levels of a logged object searched for secret keys (the top and two below it). */
const SECRET_DEPTH = 3;

/**
 * `obj` with the values of SECRET_KEYS censored, copied only where one occurs (an object without secrets is returned
 * as it is: the common case costs one look at each key). Plain objects and errors are searched; an error that holds
 * a secret becomes a copy with the same prototype, message and stack. The caller's objects are never changed.
 */
export function redactSecrets<T extends object>(obj: T, depth = 0): T {
  let out: Record<string, unknown> | undefined;
  for (const key of Object.keys(obj)) {
    const value = (obj as Record<string, unknown>)[key];
    let next = value;
    if (SECRET_KEYS.has(key)) next = CENSOR;
    else if (depth + 1 < SECRET_DEPTH && typeof value === "object" && value !== null && (isPlainObject(value) || value instanceof Error)) {
      next = redactSecrets(value, depth + 1);
    }
    if (next === value) continue;
    out ??= copyOf(obj);
    out[key] = next;
  }
  return (out ?? obj) as T;
}

function isPlainObject(value: object): boolean {
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

function copyOf(obj: object): Record<string, unknown> {
  if (!(obj instanceof Error)) return { ...obj };
  const copy = Object.assign(Object.create(Object.getPrototypeOf(obj) as object) as Error, obj);
  copy.message = obj.message;
  if (obj.stack !== undefined) copy.stack = obj.stack;
  return copy as unknown as Record<string, unknown>;
}

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
  const root = pino(
    {
      level: options.level ?? process.env.LOG_LEVEL ?? "info",
      base: { svc: options.svc, pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Secrets are censored here (and in child bindings below) rather than by pino's `redact` paths, whose wildcards
      // cost about 7 µs per line even when the line holds no secret (most of the price of a gateway's per-call line).
      formatters: { level: (label) => ({ level: label }), bindings: redactSecrets, log: redactSecrets },
    },
    // Synchronous writes (pino's own default, and what Node does for process.stdout on a pipe on Linux): each line is
    // one write(2) on this thread. The asynchronous mode hands every line to a libuv pool thread and back, measured at
    // about 50 µs more CPU per line at 500 lines/s, and loses the last lines when the process is killed.
    options.destination ?? pino.destination({ fd: 1, sync: true }),
  );
  // Every descendant logger inherits this `child` (pino makes a child with Object.create of its parent).
  const child = (Object.getPrototypeOf(root) as Logger).child;
  root.child = function (this: Logger, bindings, childOptions) {
    return child.call(this, redactSecrets(bindings), childOptions);
  } as Logger["child"];
  return root;
}
