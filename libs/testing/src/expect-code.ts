import { AssertionError } from "node:assert";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Asserts that a call fails with a ConnectError of `code` and, when given, a message (the raw message, without the
 * "[code]" prefix) matching `message` (a RegExp, or a string it must contain). `call` is the call's promise (for a
 * streaming call, e.g. `client.watch(req)[Symbol.asyncIterator]().next()`) or a function that throws or rejects.
 * Returns the error for further checks. Throws an AssertionError when the call succeeds or fails otherwise.
 */
export async function expectCode(
  call: Promise<unknown> | (() => unknown),
  code: Code,
  message?: RegExp | string,
): Promise<ConnectError> {
  const expected = `${Code[code]}${message !== undefined ? ` with a message matching ${String(message)}` : ""}`;
  let error: unknown;
  try {
    await (typeof call === "function" ? call() : call);
  } catch (e) {
    error = e;
  }
  if (error === undefined) throw new AssertionError({ message: `expected the call to fail with ${expected}, it succeeded` });
  if (!(error instanceof ConnectError)) {
    throw new AssertionError({ message: `expected a ConnectError ${expected}, got ${String(error)}`, actual: error });
  }
  const matches =
    message === undefined || (typeof message === "string" ? error.rawMessage.includes(message) : message.test(error.rawMessage));
  if (error.code !== code || !matches) {
    throw new AssertionError({
      message: `expected ${expected}, got ${Code[error.code]}: ${error.rawMessage}`,
      actual: `${Code[error.code]}: ${error.rawMessage}`,
      expected,
      operator: "expectCode",
    });
  }
  return error;
}
