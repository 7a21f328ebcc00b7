import type { ConnectRouter } from "@connectrpc/connect";
import { ConfigError, loadConfig, type BaseServiceConfig } from "@ragtune/config";
import { createLogger, type Logger } from "@ragtune/logger";
import type { z } from "zod";
import { startRpcServer, type RpcServer } from "./server.js";

/** What a service's start function gets: its parsed config, its root logger and the shutdown signal. */
export interface ServiceContext<C extends BaseServiceConfig> {
  config: C;
  logger: Logger;
  /** Aborts on SIGINT/SIGTERM; long-running loops stop on it. */
  signal: AbortSignal;
}

/** A started service: how to register its RPC handlers and how to release what it holds. */
export interface ServiceInstance {
  /** Registers the implementations: `(router) => router.service(FooService, impl)`. */
  register(router: ConnectRouter): void;
  /** Serve HTTP/1.1 (Connect JSON) on the same port as h2c; the gateway does. */
  allowHttp1?: boolean;
  /** Runs once the RPC server listens (start consumers, resume work). */
  onListening?(server: RpcServer): Promise<void> | void;
  /** Runs after the RPC server has closed: stop background work, drain the bus. */
  stop(): Promise<void>;
}

export interface ServiceDefinition<S extends z.ZodType<BaseServiceConfig>> {
  /** Short service name: ingest, dataset, trainer, eval, gateway. */
  name: string;
  /** zod schema of the service's environment (extends baseServiceSchema). */
  schema: S;
  start(context: ServiceContext<z.infer<S>>): Promise<ServiceInstance>;
  /** Environment to read; process.env by default (tests pass their own). */
  env?: Record<string, string | undefined>;
  /** Shutdown trigger; by default SIGINT/SIGTERM of this process. */
  signal?: AbortSignal;
}

/**
 * The one bootstrap every service's main.ts calls: parse the environment (a bad variable stops the start with
 * its name), create the root logger, start the service and its RPC server (h2c: gRPC, gRPC-Web, Connect; health;
 * /metrics; it logs "rpc server listening" with the URL), and on SIGINT/SIGTERM shut down in order: health
 * NOT_SERVING → RPC server closed → service stopped. Sets process.exitCode instead of exiting.
 */
export async function runService<S extends z.ZodType<BaseServiceConfig>>(definition: ServiceDefinition<S>): Promise<void> {
  let config: z.infer<S>;
  try {
    config = loadConfig(definition.name, definition.schema, definition.env ?? process.env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${err.message}\n`);
    process.exitCode = 2;
    return;
  }
  const logger = createLogger({ svc: definition.name, level: config.LOG_LEVEL });
  const shutdown = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    logger.info({ signal: sig }, "shutdown requested");
    shutdown.abort();
  };
  if (definition.signal) {
    definition.signal.addEventListener("abort", () => shutdown.abort(), { once: true });
  } else {
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
  }

  let instance: ServiceInstance | undefined;
  let server: RpcServer | undefined;
  try {
    instance = await definition.start({ config, logger, signal: shutdown.signal });
    server = await startRpcServer({
      logger,
      host: config.RPC_HOST,
      port: config.RPC_PORT,
      services: (router) => instance!.register(router),
      readMaxBytes: config.RPC_READ_MAX_BYTES,
      authToken: config.RPC_AUTH_TOKEN,
      defaultTimeoutMs: config.RPC_DEADLINE,
      shutdownTimeoutMs: config.SHUTDOWN_TIMEOUT,
      allowHttp1: instance.allowHttp1,
    });
    // startRpcServer has logged "rpc server listening" with the URL (the dev stack waits for that line).
    await instance.onListening?.(server);
    if (!shutdown.signal.aborted) {
      await new Promise<void>((resolve) => shutdown.signal.addEventListener("abort", () => resolve(), { once: true }));
    }
  } catch (err) {
    logger.fatal({ err }, "service failed");
    process.exitCode = 1;
  } finally {
    await server?.close().catch((err: unknown) => logger.error({ err }, "rpc server close failed"));
    await instance?.stop().catch((err: unknown) => logger.error({ err }, "service stop failed"));
    logger.info("stopped");
    logger.flush();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
