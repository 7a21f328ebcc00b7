// The committed generated code must be what buf generates from proto/ today (CI runs this via
// `npm test`). Runs the same script as `npm run -w @ragtune/proto check-generated`.
import { spawnSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

// Generous timeout: buf compiles the protos and runs the plugin, slow on a busy 2-core machine.
it("libs/proto/src/gen is up to date with proto/", { timeout: 180_000 }, () => {
  const result = spawnSync(process.execPath, [path.join(root, "tools/scripts/check-generated.mjs")], {
    cwd: root,
    encoding: "utf8",
  });
  expect(result.stderr).toBe("");
  expect(result.status).toBe(0);
  expect(result.stdout).toContain("is up to date");
});
