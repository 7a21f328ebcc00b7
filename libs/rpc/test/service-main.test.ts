import { spawn } from "node:child_process";
import { once } from "node:events";
import { connect } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { ConfigError, baseServiceSchema } from "@ragtune/config";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "@ragtune/proto";
import { expectCode } from "@ragtune/testing";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import {
  Code,
  createClient,
  startTestService,
  type RpcServer,
  type ServiceContext,
  type ServiceDefinition,
  type ServiceInstance,
} from "../src/index.js";
import { TestService, captureLogger, testRoutes } from "./fixtures.js";

const schema = baseServiceSchema.extend({ FIXTURE_GREETING: z.string().min(1).default("hello") });
type FixtureConfig = z.infer<typeof schema>;

interface FixtureInstance extends ServiceInstance {
  context: ServiceContext<FixtureConfig>;
  stops: number;
  /** Whether the shutdown signal had aborted when stop() ran. */
  signalAbortedAtStop?: boolean;
  server?: RpcServer;
}

/** A service of the usual shape; `fail` makes its onListening throw. */
function fixture(options: { fail?: boolean } = {}) {
  const started: FixtureInstance[] = [];
  const definition: ServiceDefinition<typeof schema, FixtureInstance> = {
    name: "fixture",
    schema,
    async start(context) {
      const instance: FixtureInstance = {
        context,
        stops: 0,
        register: testRoutes,
        onListening(server) {
          instance.server = server;
          if (options.fail === true) throw new Error("cannot resume: store unreachable");
        },
        async stop() {
          instance.stops += 1;
          instance.signalAbortedAtStop = context.signal.aborted;
          context.logger.info("fixture released");
        },
      };
      started.push(instance);
      return instance;
    },
  };
  return { definition, started };
}

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", () => resolve(true));
  });
}

describe("startService / startTestService", () => {
  it("starts as production does: config from the env, a free port, health, auth token, deadline and read limit", async () => {
    const { definition } = fixture();
    const service = await startTestService({
      definition,
      env: { FIXTURE_GREETING: "hi", RPC_AUTH_TOKEN: "0123456789abcdef", RPC_DEADLINE: "200ms", RPC_READ_MAX_BYTES: "1024" },
    });
    try {
      expect(service.url).toBe(`http://127.0.0.1:${service.port}`);
      expect(service.instance.context.config.FIXTURE_GREETING).toBe("hi");
      expect(service.config.RPC_DEADLINE).toBe(200);
      // The harness's client sends the token; health needs none.
      expect((await service.client(TestService).echo({ service: "ok" })).status).toBe(ServingStatus.SERVING);
      const health = createClient(Health, { baseUrl: service.url, protocol: "grpc" });
      expect((await health.check({ service: "ragtune.rpctest.v1.TestService" })).status).toBe(ServingStatus.SERVING);
      await expectCode(createClient(TestService, { baseUrl: service.url, protocol: "grpc" }).echo({ service: "ok" }), Code.Unauthenticated);
      const connectClient = service.client(TestService, { protocol: "connect" });
      await expectCode(connectClient.echo({ service: "hang" }), Code.DeadlineExceeded, "default deadline of 200 ms");
      await expectCode(connectClient.echo({ service: "x".repeat(4096) }), Code.ResourceExhausted);
    } finally {
      await service.stop();
    }
  });

  it("refuses a bad variable by name and starts nothing", async () => {
    const { definition, started } = fixture();
    const err = await startTestService({ definition, env: { RPC_PORT: "seventy" } }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toMatch(/fixture.*RPC_PORT/);
    expect(started).toHaveLength(0);
  });

  it("stops in order: health NOT_SERVING, RPC server closed, then the instance; stop() is idempotent", async () => {
    const { definition } = fixture();
    const log = captureLogger();
    const service = await startTestService({ definition, env: { LOG_LEVEL: "info" }, logDestination: log.destination });
    const health = createClient(Health, { baseUrl: service.url, protocol: "grpc" }).watch({ service: "" })[Symbol.asyncIterator]();
    expect((await health.next()).value.status).toBe(ServingStatus.SERVING);
    const first = service.stop();
    expect(service.stop()).toBe(first);
    expect((await health.next()).value.status).toBe(ServingStatus.NOT_SERVING);
    await first;
    expect(service.instance.stops).toBe(1);
    expect(service.instance.signalAbortedAtStop).toBe(true);
    expect(await refused(service.port)).toBe(true);
    const messages = log.lines.map((l) => l.msg);
    expect(messages).toEqual(["rpc server listening", "rpc server stopped", "fixture released", "stopped"]);
    expect(log.lines.every((l) => l.svc === "fixture")).toBe(true);
  });

  it("stops when its signal aborts", async () => {
    const { definition } = fixture();
    const shutdown = new AbortController();
    const log = captureLogger();
    const service = await startTestService({ definition, signal: shutdown.signal, env: { LOG_LEVEL: "info" }, logDestination: log.destination });
    shutdown.abort("SIGTERM");
    await log.waitFor((l) => l.msg === "stopped");
    expect(service.instance.stops).toBe(1);
    expect(await refused(service.port)).toBe(true);
    expect(log.lines.find((l) => l.msg === "shutdown requested")?.signal).toBe("SIGTERM");
    await service.stop(); // the same, finished shutdown
    expect(service.instance.stops).toBe(1);
  });

  it("a failed start logs it, releases the server and the instance, and rethrows", async () => {
    const { definition, started } = fixture({ fail: true });
    const log = captureLogger();
    await expect(startTestService({ definition, env: { LOG_LEVEL: "info" }, logDestination: log.destination })).rejects.toThrow(
      /store unreachable/,
    );
    const [instance] = started;
    expect(instance?.stops).toBe(1);
    expect(await refused(instance!.server!.port)).toBe(true);
    const fatal = log.lines.find((l) => l.msg === "service failed to start");
    expect(fatal?.level).toBe("fatal");
  });
});

describe("runService (a main.ts as a child process)", () => {
  const repoRoot = join(import.meta.dirname, "..", "..", "..");
  const main = join(import.meta.dirname, "fixture-main.ts");
  const run = (env: Record<string, string>) =>
    spawn(process.execPath, ["--conditions=@ragtune/source", "--import", "tsx", main], {
      cwd: repoRoot,
      env: { PATH: process.env.PATH, RPC_PORT: "0", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });

  it("exits 2 naming the bad variable", async () => {
    const child = run({ RPC_DEADLINE: "soon" });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const [code] = (await once(child, "exit")) as [number | null];
    expect(code).toBe(2);
    expect(stderr).toMatch(/invalid configuration for fixture: RPC_DEADLINE: expected a duration/);
  });

  it("serves until SIGTERM, then shuts down in order and exits 0", async () => {
    const child = run({ LOG_LEVEL: "info" });
    const lines: Record<string, unknown>[] = [];
    const listening = new Promise<string>((resolve) => {
      createInterface({ input: child.stdout }).on("line", (text) => {
        const line = JSON.parse(text) as Record<string, unknown>;
        lines.push(line);
        if (line.msg === "rpc server listening") resolve(line.url as string);
      });
    });
    const exited = once(child, "exit") as Promise<[number | null]>;
    const url = await listening;
    expect((await createClient(TestService, { baseUrl: url, protocol: "grpc" }).echo({ service: "ok" })).status).toBe(ServingStatus.SERVING);
    child.kill("SIGTERM");
    const [code] = await exited;
    expect(code).toBe(0);
    expect(lines.map((l) => l.msg)).toEqual(["rpc server listening", "rpc finished", "shutdown requested", "rpc server stopped", "fixture released", "stopped"]);
    expect(lines.find((l) => l.msg === "shutdown requested")?.signal).toBe("SIGTERM");
  });
});
