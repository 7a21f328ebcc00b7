/**
 * Several processes of one service behind one port (node:cluster), for a service whose request work is CPU-bound on
 * one core (the gateway: retrieval, HTTP and JSON per Ask). The primary process only supervises: it forks the
 * processes, forwards SIGTERM/SIGINT to them and waits for their shutdown, starts a new one when one dies, gives up on
 * a crash loop, and answers GET /metrics of any process with the sum over all of them (prom-client's
 * AggregatorRegistry), so a scrape that lands on any process sees the whole service. Each process is a full instance of
 * the service, as a second replica would be: it shares the listening socket (the primary hands connections out in
 * turn) and nothing else. A process whose primary is gone exits at once (node:cluster does that), so none serves on
 * unsupervised.
 */
import cluster from "node:cluster";
import type { Logger } from "@ragtune/logger";
import { AggregatorRegistry, type Registry } from "prom-client";

const METRICS_REQUEST = "ragtune:metrics-request";
const METRICS_RESPONSE = "ragtune:metrics-response";
/** Unexpected exits within CRASH_WINDOW_MS, per process, that make the primary give up (a crash loop). */
const CRASHES_PER_PROCESS = 3;
const CRASH_WINDOW_MS = 60_000;
/** A process exits 2 for a bad environment (runService): starting it again cannot help. */
const CONFIG_EXIT_CODE = 2;

export interface SuperviseOptions {
  /** Service name, for the log lines. */
  name: string;
  /** Processes to keep running (≥ 2). */
  count: number;
  logger: Logger;
  /** Test hook: called with each new process's PID. */
  onFork?: (pid: number) => void;
}

/**
 * Runs in the primary: keeps `count` processes of this program serving until SIGTERM/SIGINT (forwarded to each; the
 * primary waits for every one to finish its shutdown), or until one exits with a bad configuration or they crash in a
 * loop (the others are stopped). Resolves with the exit code for the primary: 0 after a requested shutdown whose
 * processes all exited 0, 2 for a bad configuration, else 1.
 */
export function superviseProcesses(options: SuperviseOptions): Promise<number> {
  const { count, logger } = options;
  const metrics = new AggregatorRegistry();
  let stopping = false;
  let exitCode = 0;
  const crashes: number[] = [];

  const fork = (): void => {
    const worker = cluster.fork();
    if (worker.process.pid !== undefined) options.onFork?.(worker.process.pid);
  };
  const stopAll = (signal: NodeJS.Signals): void => {
    stopping = true;
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill(signal);
  };

  return new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      logger.info({ signal, processes: Object.keys(cluster.workers ?? {}).length }, "shutdown requested; stopping the service's processes");
      stopAll("SIGTERM");
    };
    const onMessage = (worker: { send(message: unknown): boolean }, message: unknown): void => {
      if (!isMessage(message, METRICS_REQUEST)) return;
      metrics.clusterMetrics().then(
        (body) => worker.send({ type: METRICS_RESPONSE, id: message.id, body }),
        (err: unknown) => worker.send({ type: METRICS_RESPONSE, id: message.id, error: err instanceof Error ? err.message : String(err) }),
      );
    };
    /** Once stopping and no process is left: the primary's work is done. */
    const settleWhenNoneLeft = (left: number): void => {
      if (left > 0) return;
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
      cluster.off("message", onMessage);
      cluster.off("exit", onExit);
      logger.info({ exitCode }, "all of the service's processes stopped");
      resolve(exitCode);
    };
    const onExit = (worker: { process: { pid?: number | undefined } }, code: number | null, signal: string | null): void => {
      const left = Object.keys(cluster.workers ?? {}).length;
      if (stopping) {
        logger.debug({ processPid: worker.process.pid, code, signal }, `a ${options.name} process exited`);
        if (code !== 0) exitCode = exitCode === CONFIG_EXIT_CODE ? exitCode : 1;
        settleWhenNoneLeft(left);
        return;
      }
      if (code === CONFIG_EXIT_CODE) {
        logger.fatal({ processPid: worker.process.pid }, `a ${options.name} process refused its configuration; stopping the others`);
        exitCode = CONFIG_EXIT_CODE;
        stopAll("SIGTERM");
        settleWhenNoneLeft(left);
        return;
      }
      const now = Date.now();
      crashes.push(now);
      while (crashes.length > 0 && crashes[0]! < now - CRASH_WINDOW_MS) crashes.shift();
      if (crashes.length > CRASHES_PER_PROCESS * count) {
        logger.fatal({ crashes: crashes.length, windowMs: CRASH_WINDOW_MS }, `${options.name} processes keep dying; stopping the service`);
        exitCode = 1;
        stopAll("SIGTERM");
        settleWhenNoneLeft(left);
        return;
      }
      logger.error({ processPid: worker.process.pid, code, signal }, `a ${options.name} process died; starting another`);
      fork();
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    cluster.on("message", onMessage);
    cluster.on("exit", onExit);
    logger.info({ processes: count }, `starting ${count} ${options.name} processes on one port`);
    for (let i = 0; i < count; i++) fork();
  });
}

/**
 * In a process the primary supervises: renders the service's metrics summed over all its processes (asks the
 * primary, which asks each process for `registry`'s values). Undefined outside such a process.
 */
export function clusterMetricsOf(registry: Registry): (() => Promise<string>) | undefined {
  if (!cluster.isWorker) return undefined;
  // The worker side of prom-client's aggregation answers the primary with these registries' values.
  new AggregatorRegistry();
  AggregatorRegistry.setRegistries([registry]);
  let next = 0;
  const waiting = new Map<number, { resolve: (body: string) => void; reject: (err: Error) => void; timer: NodeJS.Timeout }>();
  process.on("message", (message: unknown) => {
    if (!isMessage(message, METRICS_RESPONSE)) return;
    const w = waiting.get(message.id);
    if (w === undefined) return;
    waiting.delete(message.id);
    clearTimeout(w.timer);
    if (typeof message.body === "string") w.resolve(message.body);
    else w.reject(new Error(`the primary process could not collect the metrics: ${String(message.error)}`));
  });
  return () =>
    new Promise<string>((resolve, reject) => {
      const id = next++;
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new Error("the primary process did not answer for the metrics within 10 s"));
      }, 10_000);
      waiting.set(id, { resolve, reject, timer });
      process.send?.({ type: METRICS_REQUEST, id });
    });
}

/**
 * In a supervised process whose service has stopped: closes the channel to the primary, the last thing that keeps
 * the process alive (its listening socket belongs to the primary).
 */
export function leaveSupervisor(): void {
  if (cluster.isWorker && process.connected) process.disconnect();
}

function isMessage(message: unknown, type: string): message is { type: string; id: number; body?: unknown; error?: unknown } {
  return typeof message === "object" && message !== null && (message as { type?: unknown }).type === type && typeof (message as { id?: unknown }).id === "number";
}
