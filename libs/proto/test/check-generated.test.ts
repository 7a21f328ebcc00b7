// The committed generated code must be what protoc with protoc-gen-es generates from proto/ today (CI runs this via
// `npm test`). Runs the same script as `npm run -w @ragtune/proto check-generated`.
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, expect, it } from "vitest";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const script = path.join(root, "tools/scripts/check-generated.mjs");
const scratch = mkdtempSync(path.join(tmpdir(), "ragtune-proto-test-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function check(env: Record<string, string | undefined> = {}) {
  const merged = { ...process.env, ...env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete merged[k];
  return spawnSync(process.execPath, [script], { cwd: root, encoding: "utf8", env: merged });
}

// Generous timeout: protoc compiles the protos and runs the node plugin, slow on a busy 2-core machine.
it("libs/proto/src/gen is up to date with proto/", { timeout: 180_000 }, () => {
  const result = check({ PROTOC: undefined, PROTOC_INCLUDE: undefined });
  expect(result.stderr).toBe("");
  expect(result.status).toBe(0);
  expect(result.stdout).toContain("is up to date");
});

it("refuses a protoc older than 3.21 and says what to install", { timeout: 60_000 }, () => {
  const old = path.join(scratch, "protoc-3.12");
  writeFileSync(old, '#!/bin/sh\necho "libprotoc 3.12.4"\n');
  chmodSync(old, 0o755);
  const result = check({ PROTOC: old });
  expect(result.status).toBe(1);
  expect(result.stderr).toContain('reports "libprotoc 3.12.4"; protoc >= 3.21 is needed');
});

it("says how to install protoc when there is none", { timeout: 60_000 }, () => {
  const result = check({ PROTOC: undefined, PATH: path.join(scratch, "empty-bin") });
  expect(result.status).toBe(1);
  expect(result.stderr).toContain("protoc is not installed");
  expect(result.stderr).toContain("apt-get install -y protobuf-compiler libprotobuf-dev");
});
