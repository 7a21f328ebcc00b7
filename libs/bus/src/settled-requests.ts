import { RequestOne } from "@nats-io/nats-core/internal";

/** The parts of nats.js's RequestOne this relies on (internal, checked at run time). */
interface RequestInternals {
  resolver(err: Error | null, msg: unknown): void;
  cancel(err?: Error): void;
  timer?: { cancel(): void };
  mux: { cancel(request: unknown): void };
}

const SETTLED = Symbol("settled");
let patched: boolean | undefined;

/**
 * Stops nats.js from building an Error (with its stack) for every request that succeeded: its RequestOne, once the
 * reply has settled the request, calls its own `cancel()`, which rejects the settled promise — a no-op — with a new
 * RequestError("cancelled"), capturing a stack trace each time (about 15 µs per request, 10% of the ingest service's
 * main thread; the client's `noAsyncTraces` option does not cover it). Here a request settled by its reply is only
 * unregistered (its timer and its entry in the reply multiplexer), as `cancel()` does; a real cancellation is
 * unchanged. Returns whether the patch is on (false when the internals are not as expected: another client version).
 */
export function skipSettledRequestErrors(): boolean {
  if (patched !== undefined) return patched;
  const proto = (RequestOne as unknown as { prototype: Partial<RequestInternals> } | undefined)?.prototype;
  if (proto === undefined || typeof proto.resolver !== "function" || typeof proto.cancel !== "function") return (patched = false);
  const resolver = proto.resolver;
  const cancel = proto.cancel;
  proto.resolver = function (this: RequestInternals & { [SETTLED]?: boolean }, err, msg) {
    this[SETTLED] = true;
    resolver.call(this, err, msg);
  };
  proto.cancel = function (this: RequestInternals & { [SETTLED]?: boolean }, err) {
    if (err === undefined && this[SETTLED] === true) {
      this.timer?.cancel();
      this.mux.cancel(this);
      return;
    }
    cancel.call(this, err);
  };
  return (patched = true);
}
