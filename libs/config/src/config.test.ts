import { describe, expect, it } from "vitest";
import { z } from "zod";
import { ConfigError, baseServiceSchema, envDuration, loadConfig } from "./config.js";

describe("loadConfig", () => {
  it("applies defaults", () => {
    const cfg = loadConfig("svc", baseServiceSchema, {});
    expect(cfg.NATS_URL).toEqual(["nats://127.0.0.1:4222"]);
    expect(cfg.RPC_PORT).toBe(0);
    expect(cfg.RPC_DEADLINE).toBe(60_000);
  });

  it("parses values and lists", () => {
    const cfg = loadConfig("svc", baseServiceSchema, {
      NATS_URL: "nats://a:1, nats://b:2",
      RPC_PORT: "7001",
      SHUTDOWN_TIMEOUT: "5m",
    });
    expect(cfg.NATS_URL).toEqual(["nats://a:1", "nats://b:2"]);
    expect(cfg.RPC_PORT).toBe(7001);
    expect(cfg.SHUTDOWN_TIMEOUT).toBe(300_000);
  });

  it("names every bad variable in the error", () => {
    let err: unknown;
    try {
      loadConfig("ingest", baseServiceSchema, { RPC_PORT: "seventy", LOG_LEVEL: "loud" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const message = (err as Error).message;
    expect(message).toContain("ingest");
    expect(message).toContain("RPC_PORT");
    expect(message).toContain("LOG_LEVEL");
  });

  it("rejects malformed durations with the accepted forms", () => {
    const schema = z.object({ T: envDuration("1s") });
    expect(() => loadConfig("svc", schema, { T: "soon" })).toThrow(/T: expected a duration like/);
    expect(loadConfig("svc", schema, { T: "250ms" }).T).toBe(250);
  });

  it("treats empty strings as unset", () => {
    expect(loadConfig("svc", baseServiceSchema, { RPC_PORT: "" }).RPC_PORT).toBe(0);
  });
});
