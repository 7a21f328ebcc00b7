import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { freePort, removeTempDir, startNatsServer, tempDir, type NatsServerHandle } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { busOptionsFromConfig, connectBus, type NatsConfig } from "../src/index.js";
import { silentLogger } from "./harness.js";

describe("connectBus", () => {
  it("names the server it could not reach", async () => {
    const port = await freePort();
    await expect(connectBus({ servers: `nats://127.0.0.1:${port}`, name: "t", logger: silentLogger })).rejects.toThrow(
      `cannot connect to NATS at nats://127.0.0.1:${port}`,
    );
  });

  it("rejects an empty server list", async () => {
    await expect(connectBus({ servers: " , ", name: "t", logger: silentLogger })).rejects.toThrow(/no NATS server URL/);
  });

  it("connects with its name and drains on close", async () => {
    const server = await startNatsServer({ jetstream: true });
    try {
      const bus = await connectBus({ servers: [server.url], name: "svc-name", logger: silentLogger });
      expect(bus.name).toBe("svc-name");
      expect(bus.nc.info?.port).toBe(server.port);
      await bus.close();
      expect(bus.nc.isClosed()).toBe(true);
      await bus.close(); // a second close is a no-op
    } finally {
      await server.stop();
    }
  });
});

/** A service configuration as libs/config parses it (defaults), with the given NATS variables. */
function natsConfig(url: string, vars: Partial<NatsConfig> = {}): NatsConfig {
  return {
    NATS_URL: [url],
    NATS_REPLICAS: 1,
    NATS_EVENTS_MAX_AGE: 0,
    NATS_EVENTS_MAX_BYTES: -1,
    NATS_KV_MAX_BYTES: -1,
    NATS_ARTIFACTS_MAX_BYTES: -1,
    ...vars,
  };
}

describe("busOptionsFromConfig", () => {
  it("maps the NATS variables onto connectBus options", () => {
    const options = busOptionsFromConfig(
      natsConfig("nats://n:4222", {
        NATS_REPLICAS: 3,
        NATS_USER: "ragtune",
        NATS_PASSWORD: "pw",
        NATS_EVENTS_MAX_AGE: 86_400_000,
        NATS_EVENTS_MAX_BYTES: 5_000,
        NATS_KV_MAX_BYTES: 6_000,
        NATS_ARTIFACTS_MAX_BYTES: 7_000,
      }),
      "ingest",
      silentLogger,
    );
    expect(options).toMatchObject({
      servers: ["nats://n:4222"],
      name: "ingest",
      credentials: { user: "ragtune", password: "pw", from: "NATS_USER/NATS_PASSWORD" },
      stores: { replicas: 3, eventsMaxAgeMs: 86_400_000, eventsMaxBytes: 5_000, kvMaxBytes: 6_000, artifactsMaxBytes: 7_000 },
    });
    expect(busOptionsFromConfig(natsConfig("nats://n:1", { NATS_TOKEN: "t" }), "x", silentLogger).credentials).toEqual({ token: "t", from: "NATS_TOKEN" });
    expect(busOptionsFromConfig(natsConfig("nats://n:1", { NATS_CREDS_FILE: "/c.creds" }), "x", silentLogger).credentials).toEqual({
      credsFile: "/c.creds",
      from: "NATS_CREDS_FILE",
    });
    expect(busOptionsFromConfig(natsConfig("nats://n:1"), "x", silentLogger).credentials).toBeUndefined();
  });

  it("refuses store defaults out of range, naming the variable", async () => {
    await expect(connectBus({ ...busOptionsFromConfig(natsConfig("nats://127.0.0.1:1", { NATS_REPLICAS: 7 }), "x", silentLogger) })).rejects.toThrow(
      /stores.replicas \(NATS_REPLICAS\) must be a whole number from 1 to 5, got 7/,
    );
    await expect(connectBus({ servers: "nats://127.0.0.1:1", name: "x", logger: silentLogger, stores: { kvMaxBytes: 0 } })).rejects.toThrow(
      /stores.kvMaxBytes \(NATS_KV_MAX_BYTES\) must be -1 \(no limit\) or a positive number of bytes/,
    );
  });
});

describe("connectBus with credentials", () => {
  let userServer: NatsServerHandle;
  let tokenServer: NatsServerHandle;
  let dir: string;
  beforeAll(async () => {
    [userServer, tokenServer, dir] = await Promise.all([
      startNatsServer({ auth: { user: "ragtune", password: "right-password" } }),
      startNatsServer({ auth: { token: "right-token" } }),
      tempDir("bus-creds"),
    ]);
  });
  afterAll(async () => {
    await Promise.all([userServer?.stop(), tokenServer?.stop(), dir ? removeTempDir(dir) : undefined]);
  });

  it("connects with the right user and password and can publish", async () => {
    const bus = await connectBus(busOptionsFromConfig(natsConfig(userServer.url, { NATS_USER: "ragtune", NATS_PASSWORD: "right-password" }), "auth-test", silentLogger));
    try {
      await bus.ensureEventsStream();
      const published = await bus.publish("ragtune.test.auth.published", TimestampSchema, { seconds: 1n }, { msgId: "auth:1" });
      expect(published).toMatchObject({ stream: "RAGTUNE", seq: 1, duplicate: false });
    } finally {
      await bus.close();
    }
  });

  it("fails at once on a wrong password, naming the variables", async () => {
    const options = busOptionsFromConfig(natsConfig(userServer.url, { NATS_USER: "ragtune", NATS_PASSWORD: "wrong" }), "auth-test", silentLogger);
    await expect(connectBus(options)).rejects.toThrow(`NATS at ${userServer.url} refused the credentials from NATS_USER/NATS_PASSWORD: Authorization Violation`);
    // also when told to wait for a server that is not up yet: a refusal is not worth waiting for
    await expect(connectBus({ ...options, waitForServer: true, reconnectTimeWaitMs: 50 })).rejects.toThrow(/refused the credentials from NATS_USER\/NATS_PASSWORD/);
  });

  it("says which variables to set when the server wants credentials and none were given", async () => {
    await expect(connectBus(busOptionsFromConfig(natsConfig(userServer.url), "auth-test", silentLogger))).rejects.toThrow(
      `NATS at ${userServer.url} requires credentials but none were given: set NATS_USER and NATS_PASSWORD, NATS_TOKEN or NATS_CREDS_FILE (Authorization Violation)`,
    );
  });

  it("connects with the right token and names NATS_TOKEN when it is refused", async () => {
    const bus = await connectBus(busOptionsFromConfig(natsConfig(tokenServer.url, { NATS_TOKEN: "right-token" }), "token-test", silentLogger));
    try {
      await bus.ensureEventsStream();
      expect((await bus.publish("ragtune.test.token.published", TimestampSchema, { seconds: 1n }, { msgId: "token:1" })).seq).toBe(1);
    } finally {
      await bus.close();
    }
    await expect(connectBus(busOptionsFromConfig(natsConfig(tokenServer.url, { NATS_TOKEN: "guess" }), "token-test", silentLogger))).rejects.toThrow(
      `NATS at ${tokenServer.url} refused the credentials from NATS_TOKEN: Authorization Violation`,
    );
  });

  it("names a creds file that is missing or not a .creds file", async () => {
    const missing = join(dir, "missing.creds");
    await expect(connectBus(busOptionsFromConfig(natsConfig(userServer.url, { NATS_CREDS_FILE: missing }), "creds-test", silentLogger))).rejects.toThrow(
      new RegExp(`cannot use the NATS credentials file ${missing} from NATS_CREDS_FILE: ENOENT`),
    );
    const garbage = join(dir, "garbage.creds");
    await writeFile(garbage, "not a credentials file\n");
    await expect(connectBus(busOptionsFromConfig(natsConfig(userServer.url, { NATS_CREDS_FILE: garbage }), "creds-test", silentLogger))).rejects.toThrow(
      `cannot use the NATS credentials file ${garbage} from NATS_CREDS_FILE: not a NATS .creds file (unable to parse credentials)`,
    );
  });
});
