import { readFileSync } from "node:fs";
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager, type StreamInfo } from "@nats-io/jetstream";
import { AuthorizationError, credsAuthenticator, type ConnectionOptions, type NatsConnection } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import type { Logger } from "@ragtune/logger";
import { coalesceFlushes } from "./coalesce-flushes.js";
import { skipSettledRequestErrors } from "./settled-requests.js";
import { eventPublisher, subscribeEvents, type EventSubscription, type PublishEvent, type PublishOptions, type PublishResult, type SubscribeOptions } from "./events.js";
import { openKv, type KvOptions, type TypedKv } from "./kv.js";
import { openArtifactStore, type ArtifactStore, type ArtifactStoreOptions } from "./object-store.js";
import { guardStoreFull, resolveStoreDefaults, type StoreDefaults } from "./store-limits.js";
import {
  ensureEventsStream,
  ensureWorkQueueStream,
  registerStoreDefaults,
  type EventsStreamOptions,
  type WorkQueueStreamOptions,
} from "./streams.js";
import { openWorkQueue, type WorkQueue, type WorkQueueOptions } from "./work-queue.js";

/**
 * How the bus authenticates to NATS: a user and password, a token, or a `.creds` file (user JWT + nkey seed, for
 * servers in operator mode). `from` names where they came from in errors, e.g. "NATS_USER/NATS_PASSWORD".
 */
export type NatsCredentials =
  | { user: string; password: string; from?: string }
  | { token: string; from?: string }
  | { credsFile: string; from?: string };

export interface ConnectBusOptions {
  /** One or more `nats://host:port` URLs (a comma-separated string works too). */
  servers: string | string[];
  /** Connection name shown by the server (`connz`): the service name. */
  name: string;
  logger: Logger;
  /** Base wait between reconnect attempts. Default 1000 ms (plus jitter). */
  reconnectTimeWaitMs?: number;
  /** Random extra wait added to each reconnect attempt. Default 500 ms. */
  reconnectJitterMs?: number;
  /** JetStream API request timeout. Default 10 s. */
  requestTimeoutMs?: number;
  /**
   * Keep trying until the first connection succeeds (for a server that starts after the service).
   * Default false: an unreachable server fails `connectBus` at once with the URLs in the message.
   */
  waitForServer?: boolean;
  /** Credentials for a server that requires them. Default none. */
  credentials?: NatsCredentials;
  /**
   * Replicas and retention for every stream, KV bucket and object store this bus creates (each creator's own
   * options override them). Default: one replica, no limits.
   */
  stores?: Partial<StoreDefaults>;
}

/** What the low-level modules need: the connection, the JetStream client/manager, a logger and the store defaults. */
export interface BusContext {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly logger: Logger;
  /** Replicas and retention the bus's creators use unless told otherwise. */
  readonly stores: Readonly<StoreDefaults>;
}

/** The one NATS handle a service gets at start (`connectBus`) and drains at shutdown (`close`). */
export interface Bus extends BusContext {
  readonly name: string;
  /** Create or update the `RAGTUNE` events stream (file storage, `ragtune.>`, dedupe window). */
  ensureEventsStream(options?: EventsStreamOptions): Promise<StreamInfo>;
  /** Create or update a work-queue stream (retention workqueue). */
  ensureWorkQueueStream(options: WorkQueueStreamOptions): Promise<StreamInfo>;
  /**
   * Publish a catalog event on the subject its message declares (for `TrainerJobEvent`, by its kind);
   * `msgId` makes a retry within the dedupe window a no-op.
   */
  publish<Desc extends DescMessage>(schema: Desc, event: MessageInitShape<Desc>, options: PublishOptions): Promise<PublishResult>;
  /**
   * Publish on an explicit subject: for messages outside the event catalog (tests). A catalog event
   * is refused on any subject but its declared one.
   */
  publish<Desc extends DescMessage>(
    subject: string,
    schema: Desc,
    event: MessageInitShape<Desc>,
    options: PublishOptions,
  ): Promise<PublishResult>;
  /** Run a durable consumer of typed events until `stop()`; a catalog event's filter comes from its schema (and `verb`). */
  subscribe<Desc extends DescMessage>(options: SubscribeOptions<Desc>): Promise<EventSubscription>;
  /** A typed work queue (ensures its stream and its shared durable consumer). */
  workQueue<Desc extends DescMessage>(options: WorkQueueOptions<Desc>): Promise<WorkQueue<Desc>>;
  /** A typed KV bucket (created if missing). */
  kv<Desc extends DescMessage>(bucket: string, schema: Desc, options?: KvOptions): Promise<TypedKv<Desc>>;
  /** A content-addressed artifact store (object store bucket, created if missing). */
  artifacts(bucket: string, options?: ArtifactStoreOptions): Promise<ArtifactStore>;
  /**
   * Calls `listener` at the connection's next reconnect (once); returns the unsubscribe. `retryTransient` takes it, so
   * an operation in flight or backing off across a NATS restart is retried as soon as the connection is back.
   */
  onReconnect: OnReconnect;
  /** Resolves when the connection is closed for good (after `close()` or a fatal error). */
  closed(): Promise<void | Error>;
  /** Drain: finish in-flight work of subscriptions, flush publishes, then close. */
  close(): Promise<void>;
}

function splitServers(servers: string | string[]): string[] {
  const list = (Array.isArray(servers) ? servers : servers.split(","))
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (list.length === 0) throw new Error("connectBus: no NATS server URL given (servers is empty)");
  return list;
}

/** The variables of a service's configuration (libs/config's base schema) that `busOptionsFromConfig` reads. */
export interface NatsConfig {
  NATS_URL: string[];
  NATS_REPLICAS: number;
  NATS_USER?: string | undefined;
  NATS_PASSWORD?: string | undefined;
  NATS_TOKEN?: string | undefined;
  NATS_CREDS_FILE?: string | undefined;
  NATS_EVENTS_MAX_AGE: number;
  NATS_EVENTS_MAX_BYTES: number;
  NATS_KV_MAX_BYTES: number;
  NATS_ARTIFACTS_MAX_BYTES: number;
}

/**
 * The `connectBus` options of a service from its parsed configuration:
 * `const bus = await connectBus(busOptionsFromConfig(config, "ingest", logger));`
 */
export function busOptionsFromConfig(config: NatsConfig, name: string, logger: Logger): ConnectBusOptions {
  let credentials: NatsCredentials | undefined;
  if (config.NATS_CREDS_FILE !== undefined) credentials = { credsFile: config.NATS_CREDS_FILE, from: "NATS_CREDS_FILE" };
  else if (config.NATS_TOKEN !== undefined) credentials = { token: config.NATS_TOKEN, from: "NATS_TOKEN" };
  else if (config.NATS_USER !== undefined && config.NATS_PASSWORD !== undefined) {
    credentials = { user: config.NATS_USER, password: config.NATS_PASSWORD, from: "NATS_USER/NATS_PASSWORD" };
  }
  return {
    servers: config.NATS_URL,
    name,
    logger,
    ...(credentials !== undefined ? { credentials } : {}),
    stores: {
      replicas: config.NATS_REPLICAS,
      eventsMaxAgeMs: config.NATS_EVENTS_MAX_AGE,
      eventsMaxBytes: config.NATS_EVENTS_MAX_BYTES,
      kvMaxBytes: config.NATS_KV_MAX_BYTES,
      artifactsMaxBytes: config.NATS_ARTIFACTS_MAX_BYTES,
    },
  };
}

/** The nats.js options for the credentials; a creds file that cannot be read or parsed fails here, named. */
function authOptions(credentials: NatsCredentials | undefined): Partial<ConnectionOptions> {
  if (credentials === undefined) return {};
  if ("user" in credentials) return { user: credentials.user, pass: credentials.password };
  if ("token" in credentials) return { token: credentials.token };
  const { credsFile } = credentials;
  const from = credentials.from ?? "credsFile";
  // Read on every (re)connect, so a rotated file is picked up without a restart.
  const read = () => readFileSync(credsFile);
  const authenticator = credsAuthenticator(read);
  try {
    authenticator("check");
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code !== undefined ? (err as Error).message : `not a NATS .creds file (${(err as Error).message})`;
    throw new Error(`cannot use the NATS credentials file ${credsFile} from ${from}: ${reason}`, { cause: err });
  }
  return { authenticator };
}

/** A connect error in words an operator can act on: refused credentials name where they came from. */
function connectError(err: unknown, servers: string[], credentials: NatsCredentials | undefined): Error {
  const where = servers.join(", ");
  const message = (err as Error).message;
  if (err instanceof AuthorizationError) {
    if (credentials === undefined) {
      return new Error(
        `NATS at ${where} requires credentials but none were given: set NATS_USER and NATS_PASSWORD, NATS_TOKEN or NATS_CREDS_FILE (${message})`,
        { cause: err },
      );
    }
    const from = credentials.from ?? ("user" in credentials ? "the user/password" : "token" in credentials ? "the token" : "the credentials file");
    return new Error(`NATS at ${where} refused the credentials from ${from}: ${message}`, { cause: err });
  }
  return new Error(`cannot connect to NATS at ${where}: ${message}`, { cause: err });
}

/**
 * Connects to NATS with infinite, jittered reconnects and returns the service's `Bus`.
 * Status changes (disconnect, reconnect, errors) are logged on the given logger.
 * Refused credentials fail at once, naming where they came from.
 */
export async function connectBus(options: ConnectBusOptions): Promise<Bus> {
  const servers = splitServers(options.servers);
  const stores = resolveStoreDefaults(options.stores);
  const logger = options.logger.child({ component: "bus" });
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers,
      name: options.name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: options.reconnectTimeWaitMs ?? 1_000,
      reconnectJitter: options.reconnectJitterMs ?? 500,
      waitOnFirstConnect: options.waitForServer ?? false,
      timeout: options.requestTimeoutMs ?? 10_000,
      // Without it every request captures an Error for its stack up front (two per JetStream publish), which doubled
      // the client's CPU per KV put (64 → 31 µs, 20,000 puts, 64 in flight) and was 13% of the ingest service's main
      // thread; errors keep their types and messages, only the caller's async frames are not appended to their stacks.
      noAsyncTraces: true,
      ...authOptions(options.credentials),
    });
  } catch (err) {
    throw connectError(err, servers, options.credentials);
  }
  logger.info({ server: nc.getServer(), name: options.name, replicas: stores.replicas }, "connected to NATS");
  // One socket write per event-loop turn instead of one per microtask burst (half the ingest service's main thread).
  if (!skipSettledRequestErrors()) logger.warn("cannot stop the NATS client from building an error for every answered request (its internals changed)");
  if (coalesceFlushes(nc) === undefined) logger.warn("cannot coalesce the NATS client's socket writes (its internals changed); every request is written on its own");
  // Subscriptions, not a promise per reconnect: an operation leaves nothing behind once it settles.
  const reconnectListeners = new Set<() => void>();
  const onReconnect: OnReconnect = (listener) => {
    reconnectListeners.add(listener);
    return () => reconnectListeners.delete(listener);
  };
  void watchStatus(nc, logger, () => {
    const listeners = [...reconnectListeners];
    reconnectListeners.clear();
    for (const listener of listeners) listener();
  });

  const js = jetstream(nc, { timeout: options.requestTimeoutMs ?? 10_000 });
  const jsm = await jetstreamManager(nc, { timeout: options.requestTimeoutMs ?? 10_000 });
  registerStoreDefaults(jsm, stores);
  const ctx: BusContext = { nc, js, jsm, logger, stores };
  const publish = eventPublisher(ctx);

  return {
    ...ctx,
    name: options.name,
    ensureEventsStream: (o) => ensureEventsStream(ctx, o),
    ensureWorkQueueStream: (o) => ensureWorkQueueStream(ctx, o),
    // A full events stream drops its oldest events; what can still fail is the servers' storage running out.
    publish: ((...args: unknown[]) =>
      guardStoreFull(
        () => ({ store: `the events stream (${typeof args[0] === "string" ? args[0] : (args[0] as DescMessage).typeName})` }),
        () => (publish as (...a: unknown[]) => Promise<PublishResult>)(...args),
      )) as PublishEvent,
    subscribe: (o) => subscribeEvents(ctx, o),
    workQueue: (o) => openWorkQueue(ctx, o),
    kv: (bucket, schema, o) => openKv(ctx, bucket, schema, o),
    artifacts: (bucket, o) => openArtifactStore(ctx, bucket, o),
    onReconnect,
    closed: () => nc.closed(),
    async close() {
      if (nc.isClosed()) return;
      await nc.drain();
      logger.info("NATS connection drained and closed");
    },
  };
}

/** Subscribes a listener to the connection's next reconnect; returns the unsubscribe. */
export type OnReconnect = (listener: () => void) => () => void;

async function watchStatus(nc: NatsConnection, logger: Logger, reconnected: () => void): Promise<void> {
  for await (const s of nc.status()) {
    switch (s.type) {
      case "disconnect":
        logger.warn({ server: s.server }, "NATS disconnected");
        break;
      case "reconnecting":
        logger.debug("NATS reconnecting");
        break;
      case "reconnect":
        logger.info({ server: s.server }, "NATS reconnected");
        reconnected();
        break;
      case "error":
        logger.error({ err: s.error }, "NATS async error");
        break;
      case "ldm":
        logger.warn({ server: s.server }, "NATS server entering lame duck mode");
        break;
      case "staleConnection":
        logger.warn("NATS connection stale");
        break;
      case "slowConsumer":
        logger.warn({ subject: s.sub.getSubject(), pending: s.pending }, "NATS slow consumer");
        break;
      default:
        break;
    }
  }
}
