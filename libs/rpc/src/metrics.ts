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

/** The metrics of one method, its labels resolved once: what a call updates. */
export interface MethodMetrics {
  started(): void;
  /** `code` as `codeName()` spells it: "OK", "NotFound", ... */
  handled(code: string, seconds: number): void;
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
  /** The metrics of one method (the same object for the same service, method and type). */
  forMethod(labels: RpcLabels): MethodMetrics;
}

const LABELS = ["grpc_service", "grpc_method", "grpc_type"] as const;
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

type BaseLabels = Record<(typeof LABELS)[number], string>;

/**
 * A count kept as a plain number per call and added to its prom-client counter when the counter
 * is read (its `collect`, run by every scrape and by `get()`), so a call does not pay prom-client's
 * label validation and hashing.
 */
class PendingCount {
  count = 0;
  #added = 0;
  constructor(readonly labels: Record<string, string>) {}
  flushInto(counter: Counter): void {
    const delta = this.count - this.#added;
    if (delta === 0) return;
    this.#added = this.count;
    counter.inc(this.labels, delta);
  }
}

/** Everything one registry's RPC metrics share (several servers and interceptors may use one registry). */
interface RegistryMetrics {
  started: Counter;
  handled: Counter;
  seconds: Histogram;
  /**
   * Counts not yet added to `started` / `handled`, by label set; undefined when that counter was
   * registered by someone else (without our `collect`): then a call adds to it at once.
   */
  pendingStarted: PendingCount[] | undefined;
  pendingHandled: PendingCount[] | undefined;
  methods: Map<string, MethodMetrics>;
}

const byRegistry = new WeakMap<Registry, RegistryMetrics>();

function registryMetrics(registry: Registry): RegistryMetrics {
  const known = byRegistry.get(registry);
  if (known !== undefined) return known;
  const existing = <T extends Metric>(name: string) => registry.getSingleMetric(name) as T | undefined;
  /** A counter with its pending counts: ours (made here, flushed at collect), or someone else's (added to at once). */
  const counterOf = (name: string, help: string, labelNames: readonly string[]): [Counter, PendingCount[] | undefined] => {
    const found = existing<Counter>(name);
    if (found !== undefined) return [found, undefined];
    const pending: PendingCount[] = [];
    const counter: Counter = new Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        for (const p of pending) p.flushInto(counter);
      },
    });
    return [counter, pending];
  };
  const [started, pendingStarted] = counterOf("grpc_server_started_total", "RPCs started on the server.", LABELS);
  const [handled, pendingHandled] = counterOf("grpc_server_handled_total", "RPCs completed on the server, by status code.", [...LABELS, "grpc_code"]);
  const seconds =
    existing<Histogram>("grpc_server_handling_seconds") ??
    new Histogram({
      name: "grpc_server_handling_seconds",
      help: "Time from the start of an RPC until its handler finished, in seconds.",
      labelNames: LABELS,
      buckets: BUCKETS,
      registers: [registry],
    });
  const state: RegistryMetrics = { started, handled, seconds, pendingStarted, pendingHandled, methods: new Map() };
  byRegistry.set(registry, state);
  return state;
}

/** The metrics of one method: its counts as plain numbers (see PendingCount), its histogram child. */
function methodMetrics(state: RegistryMetrics, labels: RpcLabels): MethodMetrics {
  const base: BaseLabels = { grpc_service: labels.service, grpc_method: labels.method, grpc_type: labels.type };
  const observe = state.seconds.labels(base);
  let started: () => void;
  if (state.pendingStarted === undefined) {
    const child = state.started.labels(base);
    started = () => child.inc();
  } else {
    const pending = new PendingCount(base);
    state.pendingStarted.push(pending);
    started = () => void pending.count++;
  }
  const byCode = new Map<string, PendingCount | undefined>();
  const handledCount = (code: string): void => {
    if (state.pendingHandled === undefined) {
      state.handled.inc({ ...base, grpc_code: code });
      return;
    }
    let pending = byCode.get(code);
    if (pending === undefined) {
      pending = new PendingCount({ ...base, grpc_code: code });
      byCode.set(code, pending);
      state.pendingHandled.push(pending);
    }
    pending.count++;
  };
  return {
    started,
    handled(code, secs) {
      handledCount(code);
      observe.observe(secs);
    },
  };
}

export function createRpcMetrics(registry: Registry = new Registry()): RpcMetrics {
  const state = registryMetrics(registry);
  const forMethod = (labels: RpcLabels): MethodMetrics => {
    const key = `${labels.service}/${labels.method}/${labels.type}`;
    let m = state.methods.get(key);
    if (m === undefined) {
      m = methodMetrics(state, labels);
      state.methods.set(key, m);
    }
    return m;
  };
  return {
    registry,
    forMethod,
    started(labels) {
      forMethod(labels).started();
    },
    handled(labels, code, secs) {
      forMethod(labels).handled(code, secs);
    },
  };
}
