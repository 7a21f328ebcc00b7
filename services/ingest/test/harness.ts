import { cp, mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { fromBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { connectBus, EVENTS_STREAM, type Bus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import {
  Health,
  IngestRunStatus,
  IngestService,
  type HealthCheckResponse,
  type IngestRun,
  type IngestRunEvent,
} from "@ragtune/proto";
import { startTestService, type createClient, type TestService } from "@ragtune/rpc";
import { AWS_CORPUS_DIR, grpcJsUnary, startNatsServer, tempDir, type NatsServerHandle } from "@ragtune/testing";
import { ingestConfigSchema, type IngestConfig } from "../src/config.js";
import { startIngestService, type IngestInstance } from "../src/server.js";

export const AWS_CORPUS = AWS_CORPUS_DIR;
export const SAMPLE_DOCS = join(import.meta.dirname, "../../../tools/sample-docs");

export type IngestClient = ReturnType<typeof createClient<typeof IngestService>>;
export type IngestTestService = TestService<IngestConfig, IngestInstance>;

/** What services/ingest/src/main.ts hands to runService. */
const INGEST = { name: "ingest", schema: ingestConfigSchema, start: startIngestService };

/**
 * A real nats-server, an allowed root on disk and the ingest service started as production starts it (its own bus,
 * config from the environment, RPC server on a real h2c socket), plus a bus of the test's own to read what the
 * service stored and published.
 */
export interface Harness {
  nats: NatsServerHandle;
  bus: Bus;
  root: string;
  config: IngestConfig;
  server: IngestTestService;
  grpc: IngestClient;
  connect: IngestClient;
  /** Stops the service and starts a new instance on the same NATS (same port is not kept). */
  restart(): Promise<void>;
  /** Starts one more instance of the service on the same NATS (a second replica); the caller stops it. */
  startInstance(env?: Record<string, string>): Promise<{ server: IngestTestService; grpc: IngestClient }>;
  close(): Promise<void>;
}

export async function startHarness(env: Record<string, string> = {}): Promise<Harness> {
  const nats = await startNatsServer();
  const logger = createLogger({ svc: "ingest-test", level: process.env.TEST_LOG_LEVEL ?? "silent" });
  const bus = await connectBus({ servers: nats.url, name: "ingest-test", logger });
  const root = await tempDir("ingest-root");
  const baseEnv = { INGEST_ALLOWED_ROOT: root, ...env };
  const start = (extra: Record<string, string> = {}) => startTestService({ definition: INGEST, nats, env: { ...baseEnv, ...extra } });
  const server = await start();
  const h: Harness = {
    nats,
    bus,
    root,
    config: server.config,
    server,
    grpc: server.client(IngestService),
    connect: server.client(IngestService, { protocol: "connect" }),
    async restart() {
      await h.server.stop();
      h.server = await start();
      h.grpc = h.server.client(IngestService);
      h.connect = h.server.client(IngestService, { protocol: "connect" });
    },
    async startInstance(extra = {}) {
      const instance = await start(extra);
      return { server: instance, grpc: instance.client(IngestService) };
    },
    async close() {
      await h.server.stop();
      await bus.close();
      await nats.stop();
      await rm(root, { recursive: true, force: true });
    },
  };
  return h;
}

/** Copies the AWS corpus under `dir` of the allowed root, without the SOURCE.md attribution files. */
export async function copyAwsCorpus(root: string, dir: string): Promise<string[]> {
  const target = join(root, dir);
  await mkdir(target, { recursive: true });
  await cp(AWS_CORPUS, target, { recursive: true, filter: (src) => !src.endsWith("SOURCE.md") });
  const names: string[] = [];
  const walk = async (d: string, prefix: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(join(d, e.name), `${prefix}${e.name}/`);
      else names.push(`${prefix}${e.name}`);
    }
  };
  await walk(target, `${dir}/`);
  return names.sort();
}

const FINISHED = new Set([IngestRunStatus.SUCCEEDED, IngestRunStatus.PARTIALLY_SUCCEEDED, IngestRunStatus.FAILED]);

/** Follows a run with WatchIngestRun until its completed event, then returns the events and the final run. */
export async function waitForRun(client: IngestClient, runId: string): Promise<{ events: IngestRunEvent[]; run: IngestRun }> {
  const events: IngestRunEvent[] = [];
  for await (const res of client.watchIngestRun({ runId })) events.push(res.event!);
  const { run } = await client.getIngestRun({ runId });
  if (run === undefined || !FINISHED.has(run.status)) throw new Error(`run ${runId} is not finished after its completed event`);
  return { events, run };
}

/** Every event stored on `subject` in the RAGTUNE stream, decoded (the stream is complete once a run finished). */
export async function storedEvents<Desc extends DescMessage>(bus: Bus, subject: string, schema: Desc): Promise<MessageShape<Desc>[]> {
  const info = await bus.jsm.streams.info(EVENTS_STREAM, { subjects_filter: subject });
  const count = (info.state.subjects as Record<string, number> | undefined)?.[subject] ?? 0;
  if (count === 0) return [];
  const consumer = await bus.js.consumers.get(EVENTS_STREAM, { filter_subjects: subject });
  const out: MessageShape<Desc>[] = [];
  while (out.length < count) {
    const batch = await consumer.fetch({ max_messages: count - out.length, expires: 5_000 });
    for await (const m of batch) out.push(fromBinary(schema, m.data));
  }
  return out;
}

/** grpc.health.v1 Check through @grpc/grpc-js (a client that is not connect-es). */
export function grpcJsHealthCheck(address: string, service: string): Promise<HealthCheckResponse> {
  return grpcJsUnary(address, Health.method.check, { service });
}
