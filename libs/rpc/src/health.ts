import { create } from "@bufbuild/protobuf";
import type { ConnectRouter, HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthListResponseSchema,
  type HealthCheckResponse,
} from "@ragtune/proto";
import { notFound } from "./errors.js";

export { ServingStatus };

type Listener = (service: string) => void;

/**
 * Serving status per service name, as grpc.health.v1 reports it. The name "" stands for the
 * whole server. Once `shutdown()` ran, every service reads NOT_SERVING and later `set` calls are
 * ignored (the server is going away; nothing may flip it back to SERVING).
 */
export class HealthRegistry {
  readonly #statuses = new Map<string, ServingStatus>();
  readonly #listeners = new Set<Listener>();
  readonly #endListeners = new Set<() => void>();
  #shutDown = false;

  /** Set a service's status; watchers of that service see the change. */
  set(service: string, status: ServingStatus): void {
    if (this.#shutDown) return;
    this.#update(service, status);
  }

  /** The service's status, or undefined when the service was never registered. */
  get(service: string): ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  /** All registered services and their status. */
  list(): Map<string, ServingStatus> {
    return new Map(this.#statuses);
  }

  get isShutDown(): boolean {
    return this.#shutDown;
  }

  /**
   * Mark every service NOT_SERVING, deliver that to all watchers, end their streams, and ignore
   * later updates. Called first thing when the server shuts down.
   */
  shutdown(): void {
    if (this.#shutDown) return;
    for (const service of [...this.#statuses.keys()]) {
      this.#update(service, ServingStatus.NOT_SERVING);
    }
    this.#shutDown = true;
    for (const end of [...this.#endListeners]) end();
  }

  /**
   * The service's status now, then every change, until `signal` aborts or the registry shuts
   * down (after its final NOT_SERVING). An unknown service reads SERVICE_UNKNOWN, as the
   * health-checking spec asks of Watch.
   */
  async *watch(service: string, signal: AbortSignal): AsyncGenerator<ServingStatus> {
    let pending = false;
    let ended = false;
    let wake: (() => void) | undefined;
    const onChange: Listener = (changed) => {
      if (changed !== service) return;
      pending = true;
      wake?.();
    };
    const onEnd = () => {
      ended = true;
      wake?.();
    };
    this.#listeners.add(onChange);
    this.#endListeners.add(onEnd);
    signal.addEventListener("abort", onEnd);
    try {
      let last = this.#current(service);
      yield last;
      for (;;) {
        if (pending) {
          pending = false;
          const now = this.#current(service);
          if (now !== last) {
            last = now;
            yield now;
            continue;
          }
        }
        if (ended || signal.aborted || this.#shutDown) return;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
    } finally {
      this.#listeners.delete(onChange);
      this.#endListeners.delete(onEnd);
      signal.removeEventListener("abort", onEnd);
    }
  }

  #current(service: string): ServingStatus {
    return this.#statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN;
  }

  #update(service: string, status: ServingStatus): void {
    if (this.#statuses.get(service) === status) return;
    this.#statuses.set(service, status);
    for (const listener of [...this.#listeners]) listener(service);
  }
}

/** The grpc.health.v1.Health implementation over a registry. */
export function createHealthService(registry: HealthRegistry): ServiceImpl<typeof Health> {
  const response = (status: ServingStatus): HealthCheckResponse =>
    create(HealthCheckResponseSchema, { status });
  return {
    check(req) {
      const status = registry.get(req.service);
      if (status === undefined) {
        throw notFound("health-checked service", req.service);
      }
      return response(status);
    },
    list() {
      const statuses: Record<string, HealthCheckResponse> = {};
      for (const [service, status] of registry.list()) statuses[service] = response(status);
      return create(HealthListResponseSchema, { statuses });
    },
    async *watch(req, ctx: HandlerContext) {
      for await (const status of registry.watch(req.service, ctx.signal)) {
        yield response(status);
      }
    },
  };
}

/** Register grpc.health.v1.Health on a router. */
export function registerHealthService(router: ConnectRouter, registry: HealthRegistry): void {
  router.service(Health, createHealthService(registry));
}
