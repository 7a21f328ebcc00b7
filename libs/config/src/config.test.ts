import { describe, expect, it } from "vitest";
import { z } from "zod";
import { ConfigError, baseServiceSchema, envBytes, envDuration, loadConfig } from "./config.js";

describe("loadConfig", () => {
  it("applies defaults", () => {
    const cfg = loadConfig("svc", baseServiceSchema, {});
    expect(cfg.NATS_URL).toEqual(["nats://127.0.0.1:4222"]);
    expect(cfg.RPC_PORT).toBe(0);
    expect(cfg.RPC_DEADLINE).toBe(60_000);
    expect(cfg).toMatchObject({ NATS_REPLICAS: 1, NATS_EVENTS_MAX_AGE: 0, NATS_EVENTS_MAX_BYTES: -1, NATS_KV_MAX_BYTES: -1, NATS_ARTIFACTS_MAX_BYTES: -1 });
    expect(cfg.NATS_USER ?? cfg.NATS_PASSWORD ?? cfg.NATS_TOKEN ?? cfg.NATS_CREDS_FILE).toBeUndefined();
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

  it("accepts days as a duration unit", () => {
    expect(loadConfig("svc", baseServiceSchema, { NATS_EVENTS_MAX_AGE: "30d" }).NATS_EVENTS_MAX_AGE).toBe(30 * 86_400_000);
  });
});

describe("envBytes", () => {
  const schema = z.object({ B: envBytes() });
  const bytes = (value: string) => loadConfig("svc", schema, { B: value }).B;

  it("parses plain numbers, binary and decimal units; unset is unlimited (-1)", () => {
    expect(loadConfig("svc", schema, {}).B).toBe(-1);
    expect(bytes("4096")).toBe(4096);
    expect(bytes("512Mi")).toBe(512 * 1024 ** 2);
    expect(bytes("20GiB")).toBe(20 * 1024 ** 3);
    expect(bytes("1.5G")).toBe(1.5 * 1024 ** 3);
    expect(bytes("2 GB")).toBe(2e9);
    expect(bytes("100k")).toBe(102_400);
  });

  it.each(["0", "-1", "ten", "5 parsecs", "1e9", "9999999999999Ti"])("rejects %j naming the variable", (value) => {
    expect(() => bytes(value)).toThrow(/B: expected a size like 1048576, 512Mi or 20Gi/);
  });
});

describe("NATS settings", () => {
  const load = (env: Record<string, string>) => loadConfig("svc", baseServiceSchema, env);

  it("reads replicas, credentials and retention", () => {
    const cfg = load({
      NATS_REPLICAS: "3",
      NATS_USER: "ragtune",
      NATS_PASSWORD: "pw",
      NATS_EVENTS_MAX_AGE: "7d",
      NATS_EVENTS_MAX_BYTES: "5Gi",
      NATS_KV_MAX_BYTES: "1Gi",
      NATS_ARTIFACTS_MAX_BYTES: "20Gi",
    });
    expect(cfg).toMatchObject({
      NATS_REPLICAS: 3,
      NATS_USER: "ragtune",
      NATS_PASSWORD: "pw",
      NATS_EVENTS_MAX_AGE: 7 * 86_400_000,
      NATS_EVENTS_MAX_BYTES: 5 * 1024 ** 3,
      NATS_KV_MAX_BYTES: 1024 ** 3,
      NATS_ARTIFACTS_MAX_BYTES: 20 * 1024 ** 3,
    });
    expect(load({ NATS_TOKEN: "t0k3n" }).NATS_TOKEN).toBe("t0k3n");
    expect(load({ NATS_CREDS_FILE: "/run/secrets/ragtune.creds" }).NATS_CREDS_FILE).toBe("/run/secrets/ragtune.creds");
  });

  it.each(["0", "6", "two"])("rejects NATS_REPLICAS=%s", (value) => {
    expect(() => load({ NATS_REPLICAS: value })).toThrow(/NATS_REPLICAS/);
  });

  it.each([
    [{ NATS_USER: "u" }, /NATS_PASSWORD: required when NATS_USER is set/],
    [{ NATS_PASSWORD: "p" }, /NATS_USER: required when NATS_PASSWORD is set/],
    [{ NATS_USER: "u", NATS_PASSWORD: "p", NATS_TOKEN: "t" }, /NATS_TOKEN: set only one way to authenticate to NATS, not NATS_USER\/NATS_PASSWORD and NATS_TOKEN/],
    [{ NATS_TOKEN: "t", NATS_CREDS_FILE: "/x.creds" }, /NATS_CREDS_FILE: set only one way to authenticate to NATS, not NATS_TOKEN and NATS_CREDS_FILE/],
  ])("refuses the credential combination %j", (env, message) => {
    expect(() => load(env)).toThrow(message);
  });

  it("an empty password is unset, so a user alone is refused", () => {
    expect(() => load({ NATS_USER: "u", NATS_PASSWORD: "" })).toThrow(/NATS_PASSWORD: required when NATS_USER is set/);
  });
});
