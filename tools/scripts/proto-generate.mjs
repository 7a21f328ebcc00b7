#!/usr/bin/env node
// Generates the protobuf-es code in libs/proto/src/gen from every .proto under proto/ with protoc (Debian's
// protobuf-compiler, >= 3.21; `node tools/setup/setup.mjs` installs it) and the project's protoc-gen-es:
//
//   protoc -I proto -I <well-known types> --plugin=protoc-gen-es=node_modules/.bin/protoc-gen-es \
//     --es_out=libs/proto/src/gen --es_opt=target=ts,import_extension=js <every .proto under proto/>
//
// Like buf's `clean: true`, the output folder holds exactly the generated files afterwards: generation goes to a
// temporary folder first and replaces libs/proto/src/gen only when protoc succeeded. check-generated.mjs uses the
// same generateInto() to compare a fresh generation with the committed files.
//
// PROTOC names another protoc binary (>= 3.21); PROTOC_INCLUDE the folder holding google/protobuf/*.proto when it is
// neither next to that protoc (<bin>/../include) nor in /usr/include (Debian's libprotobuf-dev).
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const protoDirRel = "proto";
export const genDirRel = "libs/proto/src/gen";
export const esOptions = "target=ts,import_extension=js";
const minimum = { major: 3, minor: 21 };
const wellKnown = path.join("google", "protobuf", "timestamp.proto");

/** A failure whose message tells the user what to do. */
export class ProtoGenerateError extends Error {}

/** Relative paths (with "/") of all files under dir whose name ends with suffix, sorted. */
export function listFiles(dir, suffix = "", prefix = "") {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...listFiles(path.join(dir, entry.name), suffix, rel));
    else if (rel.endsWith(suffix)) out.push(rel);
  }
  return out.sort();
}

/** "libprotoc 3.21.12" → { major: 3, minor: 21 }; "libprotoc 25.1" (the scheme after 3.21) → { major: 25, minor: 1 }. */
function parseVersion(text) {
  const m = /libprotoc\s+(\d+)\.(\d+)/.exec(text);
  return m ? { major: Number(m[1]), minor: Number(m[2]) } : undefined;
}

function isNewEnough(v) {
  // After 3.21 protoc's versions continued as 22.x, 23.x, …
  return v.major > minimum.major || (v.major === minimum.major && v.minor >= minimum.minor);
}

/** The protoc to use and its version: $PROTOC, else protoc on PATH. Throws a ProtoGenerateError saying how to get one. */
export function findProtoc() {
  const fromEnv = process.env.PROTOC;
  const protoc = fromEnv || "protoc";
  const r = spawnSync(protoc, ["--version"], { encoding: "utf8" });
  if (r.error || r.status !== 0) {
    throw new ProtoGenerateError(
      fromEnv
        ? `PROTOC=${fromEnv} does not run (${r.error?.message ?? (r.stderr || `exit ${r.status}`).trim()}).`
        : "protoc is not installed. Run `node tools/setup/setup.mjs` (as root it installs Debian's protobuf-compiler " +
            "and libprotobuf-dev), or `sudo apt-get install -y protobuf-compiler libprotobuf-dev`, or set PROTOC to a " +
            `protoc >= ${minimum.major}.${minimum.minor}.`,
    );
  }
  const version = parseVersion(r.stdout);
  if (!version || !isNewEnough(version)) {
    throw new ProtoGenerateError(
      `${protoc} reports "${r.stdout.trim()}"; protoc >= ${minimum.major}.${minimum.minor} is needed ` +
        "(Debian's protobuf-compiler, or set PROTOC to a newer protoc).",
    );
  }
  return { protoc, version: r.stdout.trim() };
}

/** The folder holding google/protobuf/timestamp.proto and the other well-known types for protoc. */
export function findWellKnownInclude(protoc) {
  const candidates = [];
  if (process.env.PROTOC_INCLUDE) candidates.push(process.env.PROTOC_INCLUDE);
  const binary = protoc.includes(path.sep)
    ? path.resolve(protoc)
    : (process.env.PATH ?? "").split(path.delimiter).map((d) => path.join(d, protoc)).find((p) => existsSync(p));
  if (binary) candidates.push(path.join(path.dirname(realpathSync(binary)), "..", "include"));
  candidates.push("/usr/include");
  const found = candidates.find((dir) => existsSync(path.join(dir, wellKnown)));
  if (!found) {
    throw new ProtoGenerateError(
      `the protobuf well-known types (${wellKnown}) were not found in ${candidates.join(", ")}. ` +
        "Install Debian's libprotobuf-dev (`sudo apt-get install -y libprotobuf-dev`, or `node tools/setup/setup.mjs` " +
        "as root), or set PROTOC_INCLUDE to the folder holding google/protobuf/*.proto.",
    );
  }
  return found;
}

/** The protoc-gen-es plugin installed by `npm ci` (the root devDependency @bufbuild/protoc-gen-es). */
export function findPlugin() {
  const plugin = path.join(root, "node_modules", ".bin", process.platform === "win32" ? "protoc-gen-es.cmd" : "protoc-gen-es");
  if (!existsSync(plugin)) throw new ProtoGenerateError(`protoc-gen-es not found at ${plugin}; run \`npm ci\` at the repository root first.`);
  return plugin;
}

/** Generates the code for every .proto under proto/ into outDir, which must be empty or missing. */
export function generateInto(outDir) {
  const { protoc } = findProtoc();
  const include = findWellKnownInclude(protoc);
  const plugin = findPlugin();
  const protos = listFiles(path.join(root, protoDirRel), ".proto").map((f) => `${protoDirRel}/${f}`);
  if (protos.length === 0) throw new ProtoGenerateError(`no .proto files under ${protoDirRel}/.`);
  mkdirSync(outDir, { recursive: true }); // protoc writes only into an existing folder
  const args = [
    `-I${protoDirRel}`,
    `-I${include}`,
    `--plugin=protoc-gen-es=${plugin}`,
    `--es_out=${outDir}`,
    `--es_opt=${esOptions}`,
    ...protos,
  ];
  const r = spawnSync(protoc, args, { cwd: root, encoding: "utf8" });
  if (r.error || r.status !== 0) {
    throw new ProtoGenerateError(`\`${protoc} ${args.join(" ")}\` failed:\n${r.error?.message ?? ""}${r.stderr ?? ""}${r.stdout ?? ""}`);
  }
  return protos.length;
}

/** `npm run generate`: regenerates libs/proto/src/gen, removing files no .proto produces any more. */
function main() {
  const tmp = mkdtempSync(path.join(tmpdir(), "ragtune-proto-generate-"));
  try {
    const fresh = path.join(tmp, "gen");
    const count = generateInto(fresh);
    const target = path.join(root, genDirRel);
    rmSync(target, { recursive: true, force: true });
    cpSync(fresh, target, { recursive: true });
    process.stdout.write(`proto-generate: ${genDirRel} generated from ${count} files under ${protoDirRel}/ (${listFiles(target).length} files).\n`);
  } catch (e) {
    if (!(e instanceof ProtoGenerateError)) throw e;
    process.stderr.write(`proto-generate: ${e.message}\n`);
    process.exitCode = 1;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && pathToFileURL(realpathSync(process.argv[1])).href === import.meta.url) main();
