import { inspect } from "node:util";

const REDACTED = "[redacted]";

/**
 * A credential that never shows up in a log line: JSON (pino), `String()`, template strings and `util.inspect`
 * all print "[redacted]". `reveal()` is the one way to read it, used where it goes on the wire.
 */
export class Secret {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  reveal(): string {
    return this.#value;
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return `Secret(${REDACTED})`;
  }
}

/** A string or Secret as its plain value. */
export function revealSecret(value: string | Secret | undefined): string | undefined {
  return value instanceof Secret ? value.reveal() : value;
}
