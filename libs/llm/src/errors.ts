/**
 * What went wrong with a model call, as a caller needs to decide what to do next:
 * - rate_limited   429 from the server (retried, honouring Retry-After)
 * - server_error   5xx, or a response the client cannot use (retried)
 * - timeout        no complete answer within the per-request timeout (retried)
 * - connection     refused, reset or dropped connection (retried)
 * - malformed_json a body or guided-JSON output that does not parse or does not match the schema (retried)
 * - bad_request    any other 4xx: the request itself is wrong (not retried)
 * - unauthorized   401/403: LLM_API_KEY is missing or wrong (not retried)
 * - cancelled      the caller's AbortSignal fired (not retried)
 */
export type LlmErrorKind =
  | "rate_limited"
  | "server_error"
  | "timeout"
  | "connection"
  | "malformed_json"
  | "bad_request"
  | "unauthorized"
  | "cancelled";

const RETRYABLE: Record<LlmErrorKind, boolean> = {
  rate_limited: true,
  server_error: true,
  timeout: true,
  connection: true,
  malformed_json: true,
  bad_request: false,
  unauthorized: false,
  cancelled: false,
};

export interface LlmErrorDetails {
  /** Whether another attempt may succeed. Defaults by kind. */
  retryable?: boolean;
  /** HTTP status, when the server answered. */
  status?: number;
  /** The server's own error message, when it sent one. */
  serverMessage?: string;
  /** Milliseconds the server asked to wait (Retry-After / retry-after-ms). */
  retryAfterMs?: number;
  /** Attempts made by the call that failed (set when the call gives up). */
  attempts?: number;
  cause?: unknown;
}

/** The one error type of @ragtune/llm. */
export class LlmError extends Error {
  readonly kind: LlmErrorKind;
  readonly retryable: boolean;
  readonly status: number | undefined;
  readonly serverMessage: string | undefined;
  readonly retryAfterMs: number | undefined;
  attempts: number | undefined;

  constructor(kind: LlmErrorKind, message: string, details: LlmErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "LlmError";
    this.kind = kind;
    this.retryable = details.retryable ?? RETRYABLE[kind];
    this.status = details.status;
    this.serverMessage = details.serverMessage;
    this.retryAfterMs = details.retryAfterMs;
    this.attempts = details.attempts;
  }
}

export function isLlmError(error: unknown): error is LlmError {
  return error instanceof LlmError;
}

/** The kind of error for a non-2xx HTTP status. */
export function kindForStatus(status: number): LlmErrorKind {
  if (status === 429) return "rate_limited";
  if (status === 401 || status === 403) return "unauthorized";
  if (status >= 500) return "server_error";
  return "bad_request";
}

const MAX_SERVER_MESSAGE = 1000;

/**
 * The message out of an error body: OpenAI and current vLLM send `{"error": {"message": ...}}`, older vLLM
 * `{"object": "error", "message": ...}`, FastAPI validation `{"detail": ...}`; anything else is shown as text.
 */
export function serverMessageOf(body: string): string | undefined {
  const text = body.trim();
  if (text === "") return undefined;
  let message: unknown;
  try {
    const parsed = JSON.parse(text) as unknown;
    if (parsed !== null && typeof parsed === "object") {
      const o = parsed as Record<string, unknown>;
      const error = o["error"];
      if (typeof error === "string") message = error;
      else if (error !== null && typeof error === "object") message = (error as Record<string, unknown>)["message"];
      message ??= o["message"] ?? o["detail"];
      if (message !== undefined && typeof message !== "string") message = JSON.stringify(message);
    }
  } catch {
    // not JSON: the text itself
  }
  const out = typeof message === "string" ? message : text;
  return out.length > MAX_SERVER_MESSAGE ? `${out.slice(0, MAX_SERVER_MESSAGE)}…` : out;
}
