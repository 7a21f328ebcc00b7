import { Code, ConnectError } from "@connectrpc/connect";

/**
 * The one place every ragtune service builds the errors its RPCs return.
 *
 * Each helper returns a ConnectError whose message says what was wrong and what to do about it.
 * Handlers `throw` them; the error-mapping interceptor lets ConnectErrors through untouched and
 * turns anything else into a generic `internal` error (see interceptors.ts).
 */

/** Header that carries the correlation id of an internal error, so a user can quote it. */
export const CORRELATION_ID_HEADER = "x-correlation-id";

/** A request field has a bad value. `field` is the request field's name, e.g. "collection_id". */
export function invalidArgument(field: string, message: string): ConnectError {
  return new ConnectError(`invalid ${field}: ${message}`, Code.InvalidArgument, {
    "x-invalid-field": field,
  });
}

/** The named resource does not exist, e.g. `notFound("training job", "job-42")`. */
export function notFound(what: string, id: string): ConnectError {
  return new ConnectError(`${what} "${id}" not found`, Code.NotFound);
}

/** The resource to be created exists already. */
export function alreadyExists(what: string, id: string): ConnectError {
  return new ConnectError(`${what} "${id}" already exists`, Code.AlreadyExists);
}

/**
 * The system is not in a state in which the call can run, e.g. cancelling a finished job.
 * `message` should say what state is needed and how to get there.
 */
export function failedPrecondition(message: string): ConnectError {
  return new ConnectError(message, Code.FailedPrecondition);
}

/** The call was well-formed but conflicts with concurrent work (e.g. a version mismatch); retrying may help. */
export function aborted(message: string): ConnectError {
  return new ConnectError(message, Code.Aborted);
}

/** A quota or size limit was hit. */
export function resourceExhausted(message: string): ConnectError {
  return new ConnectError(message, Code.ResourceExhausted);
}

/** A dependency (NATS, model server, worker) cannot be reached right now; the client may retry. */
export function unavailable(message: string): ConnectError {
  return new ConnectError(message, Code.Unavailable);
}

/** The call needs credentials it did not carry, or they are wrong. */
export function unauthenticated(message: string): ConnectError {
  return new ConnectError(message, Code.Unauthenticated);
}

/** The caller is known but may not do this. */
export function permissionDenied(message: string): ConnectError {
  return new ConnectError(message, Code.PermissionDenied);
}

/** The call's deadline passed before it finished. */
export function deadlineExceeded(message = "the call did not finish before its deadline"): ConnectError {
  return new ConnectError(message, Code.DeadlineExceeded);
}

/** The RPC or the requested feature is not implemented by this server. */
export function unimplemented(message: string): ConnectError {
  return new ConnectError(message, Code.Unimplemented);
}

/**
 * The generic error a client sees when a handler failed unexpectedly. The real cause is only
 * logged, under the same correlation id.
 */
export function internalError(correlationId: string): ConnectError {
  return new ConnectError(
    `internal error; quote correlation id ${correlationId} when reporting it`,
    Code.Internal,
    { [CORRELATION_ID_HEADER]: correlationId },
  );
}

/**
 * The name of a status code as gRPC spells it in Go and in grpc-prometheus: "OK", "NotFound",
 * "DeadlineExceeded"... `undefined` means success.
 */
export function codeName(code: Code | undefined): string {
  if (code === undefined) return "OK";
  return Code[code] ?? `Code${String(code)}`;
}
