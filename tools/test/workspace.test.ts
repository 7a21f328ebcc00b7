import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { repoRoot } from "../src/stack.js";

// Two copies of the protobuf runtime or of connect-es break `instanceof` checks and registries at run time, so the
// lockfile must hold exactly one version of each.
describe("the lockfile", () => {
  it("holds one version each of @bufbuild/protobuf and @connectrpc/*", () => {
    const lock = JSON.parse(readFileSync(join(repoRoot, "package-lock.json"), "utf8")) as {
      packages: Record<string, { version?: string }>;
    };
    const versions = new Map<string, Set<string>>();
    for (const [path, entry] of Object.entries(lock.packages)) {
      const name = path.slice(path.lastIndexOf("node_modules/") + "node_modules/".length);
      if (!path.includes("node_modules/") || !entry.version) continue;
      if (name === "@bufbuild/protobuf" || name.startsWith("@connectrpc/")) {
        versions.set(name, (versions.get(name) ?? new Set()).add(entry.version));
      }
    }
    expect([...versions.keys()].sort()).toEqual(["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-node", "@connectrpc/connect-web"]);
    for (const [name, set] of versions) expect([...set], name).toHaveLength(1);
  });
});
