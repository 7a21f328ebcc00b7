#!/usr/bin/env node
// Fails when the committed generated protobuf code (libs/proto/src/gen) is not what
// `buf generate` produces from proto/ today. Generates into a temporary directory with a copy of
// buf.gen.yaml whose `out` points there, then compares the two trees file by file, so the result
// does not depend on the git state of any other file.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const genDirRel = "libs/proto/src/gen";
const committedDir = path.join(root, genDirRel);
const binDir = path.join(root, "node_modules", ".bin");
const buf = path.join(binDir, process.platform === "win32" ? "buf.cmd" : "buf");

function fail(message) {
  process.stderr.write(`check-generated: ${message}\n`);
  process.exitCode = 1;
}

/** Relative paths of all files under dir, sorted. */
function listFiles(dir, prefix = "") {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...listFiles(path.join(dir, entry.name), rel));
    else out.push(rel);
  }
  return out.sort();
}

function main() {
  if (!existsSync(buf)) {
    fail(`buf not found at ${buf}; run \`npm ci\` at the repository root first.`);
    return;
  }
  const template = readFileSync(path.join(root, "buf.gen.yaml"), "utf8");
  const outLine = /^(\s*out:\s*)(\S+)\s*$/gm;
  const outs = [...template.matchAll(outLine)].map((m) => m[2]);
  if (outs.length !== 1 || outs[0] !== genDirRel) {
    fail(`buf.gen.yaml must have exactly one plugin output \`out: ${genDirRel}\`; found: ${outs.join(", ") || "none"}.`);
    return;
  }

  const tmp = mkdtempSync(path.join(tmpdir(), "ragtune-check-generated-"));
  try {
    const freshDir = path.join(tmp, "gen");
    const templatePath = path.join(tmp, "buf.gen.yaml");
    writeFileSync(templatePath, template.replace(outLine, (_m, lead) => `${lead}${freshDir}`));
    const result = spawnSync(buf, ["generate", "--template", templatePath], {
      cwd: root,
      encoding: "utf8",
      env: { ...process.env, PATH: `${binDir}${path.delimiter}${process.env.PATH ?? ""}` },
    });
    if (result.error || result.status !== 0) {
      fail(`\`buf generate\` failed:\n${result.error?.message ?? ""}${result.stderr ?? ""}${result.stdout ?? ""}`);
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
      `${genDirRel} is stale: it differs from what \`buf generate\` produces from proto/.`,
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
