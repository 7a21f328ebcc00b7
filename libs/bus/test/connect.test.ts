import { freePort, startNatsServer } from "@ragtune/testing";
import { describe, expect, it } from "vitest";
import { connectBus } from "../src/index.js";
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
