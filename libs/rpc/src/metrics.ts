import { Counter, Histogram, Registry, type Metric } from "prom-client";

/** What kind of RPC a method is, as grpc-prometheus labels it. */
export type RpcType = "unary" | "client_stream" | "server_stream" | "bidi_stream";

export interface RpcLabels {
  /** Fully qualified service name, e.g. "grpc.health.v1.Health". */
  service: string;
  /** Method name, e.g. "Check". */
  method: string;
  type: RpcType;
}

/**
 * Per-RPC server metrics in the grpc-prometheus naming, so existing dashboards work:
 * `grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`,
 * `grpc_server_handling_seconds` (histogram).
 */
export interface RpcMetrics {
  readonly registry: Registry;
  started(labels: RpcLabels): void;
  /** `code` as `codeName()` spells it: "OK", "NotFound", ... */
  handled(labels: RpcLabels, code: string, seconds: number): void;
}

const LABELS = ["grpc_service", "grpc_method", "grpc_type"] as const;

/** Reuse a metric already registered under `name` (several servers may share one registry). */
function getOrCreate<T extends Metric>(registry: Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make();
}

export function createRpcMetrics(registry: Registry = new Registry()): RpcMetrics {
  const started = getOrCreate(
    registry,
    "grpc_server_started_total",
    () =>
      new Counter({
        name: "grpc_server_started_total",
        help: "RPCs started on the server.",
        labelNames: LABELS,
        registers: [registry],
      }),
  );
  const handled = getOrCreate(
    registry,
    "grpc_server_handled_total",
    () =>
      new Counter({
        name: "grpc_server_handled_total",
        help: "RPCs completed on the server, by status code.",
        labelNames: [...LABELS, "grpc_code"],
        registers: [registry],
      }),
  );
  const seconds = getOrCreate(
    registry,
    "grpc_server_handling_seconds",
    () =>
      new Histogram({
        name: "grpc_server_handling_seconds",
        help: "Time from the start of an RPC until its handler finished, in seconds.",
        labelNames: LABELS,
        buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
        registers: [registry],
      }),
  );
  const base = (l: RpcLabels) => ({
    grpc_service: l.service,
    grpc_method: l.method,
    grpc_type: l.type,
  });
  return {
    registry,
    started(labels) {
      started.inc(base(labels));
    },
    handled(labels, code, secs) {
      handled.inc({ ...base(labels), grpc_code: code });
      seconds.observe(base(labels), secs);
    },
  };
}
