import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger, redactSecrets } from "./logger.js";

function capture() {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split("\n").filter(Boolean)) lines.push(JSON.parse(line));
      cb();
    },
  });
  return { lines, destination };
}

describe("createLogger", () => {
  it("writes JSON lines with svc and child bindings", () => {
    const { lines, destination } = capture();
    const log = createLogger({ svc: "ingest", destination });
    log.child({ jobId: "job-1" }).info({ step: 3 }, "step done");
    expect(lines[0]).toMatchObject({ svc: "ingest", jobId: "job-1", step: 3, msg: "step done", level: "info" });
  });

  it("redacts API keys and authorization headers", () => {
    const { lines, destination } = capture();
    const log = createLogger({ svc: "gateway", destination });
    log.info({ apiKey: "sk-secret", req: { headers: { authorization: "Bearer abc" } } }, "call");
    const text = JSON.stringify(lines[0]);
    expect(text).not.toContain("sk-secret");
    expect(text).not.toContain("Bearer abc");
    expect(text).toContain("[redacted]");
  });

  it("redacts secrets in child bindings, two levels down and in errors, without changing the logged objects", () => {
    const { lines, destination } = capture();
    const log = createLogger({ svc: "gateway", destination });
    const config = { llmApiKey: "sk-config", natsToken: "nats-secret", baseUrl: "http://10.0.0.5:8000/v1" };
    const err = Object.assign(new Error("denied"), { token: "err-token" });
    const logged = { config, err, a: { b: { password: "pw-deep" } }, safe: { c: 1 } };
    log.child({ token: "child-secret", nested: { apiKey: "nested-secret" } }).warn(logged, "call");
    const text = JSON.stringify(lines[0]);
    for (const secret of ["sk-config", "nats-secret", "err-token", "pw-deep", "child-secret", "nested-secret"]) expect(text).not.toContain(secret);
    expect(lines[0]).toMatchObject({ config: { baseUrl: "http://10.0.0.5:8000/v1" }, err: { type: "Error", message: "denied" }, safe: { c: 1 }, msg: "call" });
    expect(String((lines[0]!["err"] as { stack: string }).stack)).toContain("Error: denied");
    // the caller's objects keep their values
    expect(config.llmApiKey).toBe("sk-config");
    expect(err.token).toBe("err-token");
    expect(logged.a.b.password).toBe("pw-deep");
  });

  it("returns an object without secrets as it is (no copy)", () => {
    const plain = { code: "ok", durationMs: 1.2, nested: { a: 1 } };
    expect(redactSecrets(plain)).toBe(plain);
    const withSecret = { nested: { token: "t" }, other: { a: 1 } };
    const out = redactSecrets(withSecret);
    expect(out).not.toBe(withSecret);
    expect(out.other).toBe(withSecret.other);
    expect(out.nested).toEqual({ token: "[redacted]" });
  });
});
