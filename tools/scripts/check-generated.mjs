#!/usr/bin/env node
// Fails when the committed generated protobuf code (libs/proto/src/gen) is not what protoc with protoc-gen-es
// produces from proto/ today (the same generation as `npm run generate`, tools/scripts/proto-generate.mjs). Generates
// into a temporary directory, then compares the two trees file by file, so the result does not depend on the git
// state of any other file.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { ProtoGenerateError, genDirRel, generateInto, listFiles, root } from "./proto-generate.mjs";

const committedDir = path.join(root, genDirRel);

function fail(message) {
  process.stderr.write(`check-generated: ${message}\n`);
  process.exitCode = 1;
}

function main() {
  const tmp = mkdtempSync(path.join(tmpdir(), "ragtune-check-generated-"));
  try {
    const freshDir = path.join(tmp, "gen");
    try {
      generateInto(freshDir);
    } catch (e) {
      if (!(e instanceof ProtoGenerateError)) throw e;
      fail(e.message);
      return;
    }

    const fresh = listFiles(freshDir);
    const committed = listFiles(committedDir);
    const freshSet = new Set(fresh);
    const committedSet = new Set(committed);
    const missing = fresh.filter((f) => !committedSet.has(f));
    const extra = committed.filter((f) => !freshSet.has(f));
    const changed = fresh.filter(
      (f) =>
        committedSet.has(f) &&
        !readFileSync(path.join(freshDir, f)).equals(readFileSync(path.join(committedDir, f))),
    );
    if (missing.length + extra.length + changed.length === 0) {
      process.stdout.write(`check-generated: ${genDirRel} is up to date (${fresh.length} files).\n`);
      return;
    }
    const lines = [
      `${genDirRel} is stale: it differs from what protoc with protoc-gen-es produces from proto/.`,
      ...missing.map((f) => `  missing (not generated yet): ${genDirRel}/${f}`),
      ...extra.map((f) => `  extra (no longer generated): ${genDirRel}/${f}`),
      ...changed.map((f) => `  changed: ${genDirRel}/${f}`),
      "Run `npm run generate` at the repository root and commit the result.",
    ];
    fail(lines.join("\n"));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

main();
