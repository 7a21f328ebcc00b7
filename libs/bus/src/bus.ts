import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager, type StreamInfo } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import type { Logger } from "@ragtune/logger";
import { eventPublisher, subscribeEvents, type EventSubscription, type PublishOptions, type PublishResult, type SubscribeOptions } from "./events.js";
import { openKv, type KvOptions, type TypedKv } from "./kv.js";
import { openArtifactStore, type ArtifactStore, type ArtifactStoreOptions } from "./object-store.js";
import { ensureEventsStream, ensureWorkQueueStream, type EventsStreamOptions, type WorkQueueStreamOptions } from "./streams.js";
import { openWorkQueue, type WorkQueue, type WorkQueueOptions } from "./work-queue.js";

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
}

/** What the low-level modules need: the connection, the JetStream client/manager and a logger. */
export interface BusContext {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly logger: Logger;
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

/**
 * Connects to NATS with infinite, jittered reconnects and returns the service's `Bus`.
 * Status changes (disconnect, reconnect, errors) are logged on the given logger.
 */
export async function connectBus(options: ConnectBusOptions): Promise<Bus> {
  const servers = splitServers(options.servers);
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
    });
  } catch (err) {
    throw new Error(`cannot connect to NATS at ${servers.join(", ")}: ${(err as Error).message}`, { cause: err });
  }
  logger.info({ server: nc.getServer(), name: options.name }, "connected to NATS");
  void watchStatus(nc, logger);

  const js = jetstream(nc, { timeout: options.requestTimeoutMs ?? 10_000 });
  const jsm = await jetstreamManager(nc, { timeout: options.requestTimeoutMs ?? 10_000 });
  const ctx: BusContext = { nc, js, jsm, logger };

  return {
    ...ctx,
    name: options.name,
    ensureEventsStream: (o) => ensureEventsStream(jsm, o),
    ensureWorkQueueStream: (o) => ensureWorkQueueStream(jsm, o),
    publish: eventPublisher(ctx),
    subscribe: (o) => subscribeEvents(ctx, o),
    workQueue: (o) => openWorkQueue(ctx, o),
    kv: (bucket, schema, o) => openKv(ctx, bucket, schema, o),
    artifacts: (bucket, o) => openArtifactStore(ctx, bucket, o),
    closed: () => nc.closed(),
    async close() {
      if (nc.isClosed()) return;
      await nc.drain();
      logger.info("NATS connection drained and closed");
    },
  };
}

async function watchStatus(nc: NatsConnection, logger: Logger): Promise<void> {
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
