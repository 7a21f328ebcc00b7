/** An error a client gets as an HTTP status and OpenAI's error body (as vLLM sends it). */
export class ModelServerError extends Error {
  readonly param: string | null;
  readonly type: string;

  constructor(
    readonly status: number,
    message: string,
    options: { param?: string; type?: string; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ModelServerError";
    this.param = options.param ?? null;
    this.type = options.type ?? errorType(status);
  }

  /** `{"error": {"message", "type", "param", "code"}}`: OpenAI's shape, which vLLM sends too. */
  toBody(): { error: { message: string; type: string; param: string | null; code: number } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.status } };
  }
}

function errorType(status: number): string {
  switch (status) {
    case 400:
      return "BadRequestError";
    case 401:
      return "AuthenticationError";
    case 404:
      return "NotFoundError";
    case 413:
      return "BadRequestError";
    case 429:
      return "RateLimitError";
    case 503:
      return "ServiceUnavailableError";
    default:
      return status >= 500 ? "InternalServerError" : "BadRequestError";
  }
}
