import cluster from "node:cluster";
import type { ConnectRouter } from "@connectrpc/connect";
import { ConfigError, loadConfig, type BaseServiceConfig } from "@ragtune/config";
import { createLogger, type Logger, type LoggerOptions } from "@ragtune/logger";
import type { z } from "zod";
import { leaveSupervisor, superviseProcesses } from "./processes.js";
import { startRpcServer, type RpcServer, type RpcServerOptions } from "./server.js";

/** What a service's start function gets: its parsed config, its root logger and the shutdown signal. */
export interface ServiceContext<C extends BaseServiceConfig> {
  config: C;
  logger: Logger;
  /** Aborts when the service begins to stop (SIGINT/SIGTERM in production); long-running loops stop on it. */
  signal: AbortSignal;
}

/** A started service: how to register its RPC handlers and how to release what it holds. */
export interface ServiceInstance {
  /** Registers the implementations: `(router) => router.service(FooService, impl)`. */
  register(router: ConnectRouter): void;
  /** Serve HTTP/1.1 (Connect JSON) on the same port as h2c; the gateway does. */
  allowHttp1?: boolean;
  /** Answers requests that are not RPCs (see RpcServerOptions.httpHandler), e.g. the gateway's dashboard files. */
  httpHandler?: RpcServerOptions["httpHandler"];
  /** Runs once the RPC server listens (start consumers, resume work). */
  onListening?(server: RpcServer): Promise<void> | void;
  /** Runs after the RPC server has closed: stop background work, drain the bus. */
  stop(): Promise<void>;
}

/** A service as main.ts hands it to runService (and a test to startService): name, environment schema, start. */
export interface ServiceDefinition<S extends z.ZodType<BaseServiceConfig>, I extends ServiceInstance = ServiceInstance> {
  /** Short service name: ingest, dataset, trainer, eval, gateway. */
  name: string;
  /** zod schema of the service's environment (extends baseServiceSchema). */
  schema: S;
  start(context: ServiceContext<z.infer<S>>): Promise<I>;
  /**
   * How many processes serve the service's port (runService only; node:cluster, see processes.ts), from its config.
   * Absent or 1: this process alone.
   */
  processes?(config: z.infer<S>): number;
}

export interface StartServiceOptions {
  /** Environment parsed with the definition's schema; process.env by default. */
  env?: Record<string, string | undefined>;
  /** Aborting it stops the service, as stop() does (runService aborts it on SIGINT/SIGTERM with the signal's name). */
  signal?: AbortSignal;
  /** Where the root logger writes; stdout by default (tests read lines back). */
  logDestination?: LoggerOptions["destination"];
}

/** A service started in this process. */
export interface RunningService<C extends BaseServiceConfig, I extends ServiceInstance = ServiceInstance> {
  readonly name: string;
  /** Base URL for clients, e.g. http://127.0.0.1:50051. */
  readonly url: string;
  readonly port: number;
  readonly config: C;
  readonly logger: Logger;
  /** What the definition's start returned (tests reach a service's internals through it). */
  readonly instance: I;
  /** The RPC server (health registry, metrics). */
  readonly server: RpcServer;
  /**
   * Shuts down in order: health NOT_SERVING → RPC server closed (in-flight calls end, up to SHUTDOWN_TIMEOUT) →
   * the instance stopped. Each step runs even if an earlier one failed; failures are logged and the first is
   * rethrown. Idempotent: every call returns the same promise.
   */
  stop(): Promise<void>;
}

/**
 * Starts a service in this process exactly as production does, without touching process signals or the exit code:
 * parse `env` with the definition's schema (a bad variable throws a ConfigError naming it), create the root logger,
 * run the definition's start, then the RPC server (h2c: gRPC, gRPC-Web, Connect; health; /metrics; auth token,
 * deadlines, read size limit and shutdown timeout from the config; it logs "rpc server listening" with the URL),
 * then the instance's onListening. A failed start logs "service failed to start", releases what was started and
 * rethrows.
 */
export async function startService<S extends z.ZodType<BaseServiceConfig>, I extends ServiceInstance>(
  definition: ServiceDefinition<S, I>,
  options: StartServiceOptions = {},
): Promise<RunningService<z.infer<S>, I>> {
  const config: z.infer<S> = loadConfig(definition.name, definition.schema, options.env ?? process.env);
  const logger = createLogger({ svc: definition.name, level: config.LOG_LEVEL, destination: options.logDestination });
  const shutdown = new AbortController();
  let instance: I | undefined;
  let server: RpcServer | undefined;
  let started = false;
  let stopping: Promise<void> | undefined;

  const onAbort = () => {
    const reason: unknown = options.signal?.reason;
    logger.info(typeof reason === "string" ? { signal: reason } : {}, "shutdown requested");
    shutdown.abort();
    // During the start, the start function and startService's own error path see the aborted signal.
    if (started) stop().catch(() => undefined); // logged by stop(); its callers get the rejection
  };
  const release = async (): Promise<void> => {
    shutdown.abort();
    options.signal?.removeEventListener("abort", onAbort);
    const failures: unknown[] = [];
    await server?.close().catch((err: unknown) => {
      logger.error({ err }, "rpc server close failed");
      failures.push(err);
    });
    await instance?.stop().catch((err: unknown) => {
      logger.error({ err }, "service stop failed");
      failures.push(err);
    });
    logger.info("stopped");
    logger.flush();
    if (failures.length > 0) throw failures[0];
  };
  const stop = (): Promise<void> => (stopping ??= release());

  if (options.signal?.aborted === true) onAbort();
  else options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    instance = await definition.start({ config, logger, signal: shutdown.signal });
    const registered = instance;
    server = await startRpcServer({
      logger,
      host: config.RPC_HOST,
      port: config.RPC_PORT,
      services: (router) => registered.register(router),
      readMaxBytes: config.RPC_READ_MAX_BYTES,
      authToken: config.RPC_AUTH_TOKEN,
      defaultTimeoutMs: config.RPC_DEADLINE,
      shutdownTimeoutMs: config.SHUTDOWN_TIMEOUT,
      allowHttp1: instance.allowHttp1,
      ...(instance.httpHandler !== undefined ? { httpHandler: instance.httpHandler } : {}),
    });
    // startRpcServer has logged "rpc server listening" with the URL (the dev stack waits for that line).
    await instance.onListening?.(server);
  } catch (err) {
    logger.fatal({ err }, "service failed to start");
    await stop().catch(() => undefined); // already logged
    throw err;
  }
  started = true;
  const running: RunningService<z.infer<S>, I> = {
    name: definition.name,
    url: server.url,
    port: server.port,
    config,
    logger,
    instance,
    server,
    stop,
  };
  if (shutdown.signal.aborted) stop().catch(() => undefined); // the signal came during the start
  return running;
}

/** A bad environment: its message (naming the variable) on stderr and exit code 2. False for any other error. */
function refusedEnvironment(err: unknown): boolean {
  if (!(err instanceof ConfigError)) return false;
  process.stderr.write(`${err.message}\n`);
  process.exitCode = 2;
  return true;
}

/**
 * The one bootstrap every service's main.ts calls: startService with process.env, stopped by SIGINT/SIGTERM.
 * Sets process.exitCode instead of exiting: 2 for a bad environment (the message on stderr names the variable),
 * 1 when the start or the shutdown failed (logged).
 */
export async function runService<S extends z.ZodType<BaseServiceConfig>, I extends ServiceInstance>(
  definition: ServiceDefinition<S, I>,
): Promise<void> {
  if (definition.processes !== undefined && cluster.isPrimary) {
    let config: z.infer<S>;
    try {
      config = loadConfig(definition.name, definition.schema, process.env);
    } catch (err) {
      if (refusedEnvironment(err)) return;
      throw err;
    }
    const count = definition.processes(config);
    if (count > 1) {
      const logger = createLogger({ svc: definition.name, level: config.LOG_LEVEL });
      process.exitCode = await superviseProcesses({ name: definition.name, count, logger });
      logger.flush();
      return;
    }
  }
  const shutdown = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => shutdown.abort(signal);
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const service = await startService(definition, { env: process.env, signal: shutdown.signal });
    if (!shutdown.signal.aborted) {
      await new Promise<void>((resolve) => shutdown.signal.addEventListener("abort", () => resolve(), { once: true }));
    }
    await service.stop();
  } catch (err) {
    if (!refusedEnvironment(err)) process.exitCode = 1;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    leaveSupervisor();
  }
}
