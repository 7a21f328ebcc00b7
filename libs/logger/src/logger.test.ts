import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger } from "./logger.js";

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
});
