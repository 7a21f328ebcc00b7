import type { DescService } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import type { BaseServiceConfig } from "@ragtune/config";
import type { z } from "zod";
import { createClient, type RpcClientOptions } from "./client.js";
import {
  startService,
  type RunningService,
  type ServiceDefinition,
  type ServiceInstance,
  type StartServiceOptions,
} from "./service-main.js";

export interface TestServiceOptions<S extends z.ZodType<BaseServiceConfig>, I extends ServiceInstance> {
  /** The same definition the service's main.ts passes to runService. */
  definition: ServiceDefinition<S, I>;
  /** The nats-server to use (e.g. `startNatsServer()` of @ragtune/testing): sets NATS_URL. */
  nats?: { url: string };
  /**
   * The service's environment on top of the harness defaults (RPC_HOST=127.0.0.1, RPC_PORT=0, LOG_LEVEL from
   * $TEST_LOG_LEVEL or "silent", NATS_URL). process.env is not read: a test states what it sets.
   */
  env?: Record<string, string | undefined>;
  /** Aborting it stops the service. */
  signal?: AbortSignal;
  /** Where the service's log lines go (stdout by default; a test may read them back). */
  logDestination?: StartServiceOptions["logDestination"];
}

/** A service started by {@link startTestService}. */
export interface TestService<C extends BaseServiceConfig, I extends ServiceInstance = ServiceInstance>
  extends RunningService<C, I> {
  /** A client of `service` on this instance: gRPC over h2c unless told otherwise; sends RPC_AUTH_TOKEN when set. */
  client<T extends DescService>(service: T, options?: Partial<RpcClientOptions>): Client<T>;
}

/**
 * The one in-process service harness: starts a service through startService, as production does (same config schema,
 * auth token, deadlines, read size limit, health, start/stop order), on a free port of 127.0.0.1. Call `stop()` when
 * done. It lives in @ragtune/rpc, not @ragtune/testing, because @ragtune/rpc's own tests use @ragtune/testing: a
 * harness there would make the two packages depend on each other.
 */
export async function startTestService<S extends z.ZodType<BaseServiceConfig>, I extends ServiceInstance>(
  options: TestServiceOptions<S, I>,
): Promise<TestService<z.infer<S>, I>> {
  const env = {
    RPC_HOST: "127.0.0.1",
    RPC_PORT: "0",
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "silent",
    ...(options.nats !== undefined ? { NATS_URL: options.nats.url } : {}),
    ...options.env,
  };
  const running = await startService(options.definition, {
    env,
    ...(options.signal !== undefined ? { signal: options.signal } : {}),
    ...(options.logDestination !== undefined ? { logDestination: options.logDestination } : {}),
  });
  return {
    ...running,
    client: (service, clientOptions = {}) =>
      createClient(service, {
        baseUrl: running.url,
        protocol: "grpc",
        ...(running.config.RPC_AUTH_TOKEN !== undefined ? { authToken: running.config.RPC_AUTH_TOKEN } : {}),
        ...clientOptions,
      }),
  };
}
