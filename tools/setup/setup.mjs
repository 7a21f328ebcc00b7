#!/usr/bin/env node
// Installs what a fresh machine lacks for ragtune's tests and demo, idempotently:
//  1. nats-server (Debian package) when no nats-server binary is found, and protoc with the protobuf well-known types
//     (Debian's protobuf-compiler, libprotobuf-dev) for the generated code in libs/proto;
//  2. the trainer worker's Python virtual environment from its pinned requirements;
//  3. kubectl (deploy test) and Chromium (the dashboard's browser test) when an apt repository offers them.
// Fast when everything is current (a stamp holds the hash of requirements.txt).
// Explains clearly what to do when it cannot install (not root, no apt, no python3).
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const workerDir = join(root, "services", "trainer", "worker");
const venv = join(workerDir, ".venv");
const say = (msg) => process.stderr.write(`[setup] ${msg}\n`);

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: opts.capture ? ["ignore", "pipe", "pipe"] : "inherit", encoding: "utf8", ...opts });
  return { ok: r.status === 0, stdout: r.stdout ?? "", stderr: r.stderr ?? "", error: r.error };
}

function fail(msg) {
  say(`ERROR: ${msg}`);
  process.exit(1);
}

function findNatsServer() {
  if (process.env.NATS_SERVER_BIN && existsSync(process.env.NATS_SERVER_BIN)) return process.env.NATS_SERVER_BIN;
  for (const p of ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]) if (existsSync(p)) return p;
  const w = run("sh", ["-c", "command -v nats-server"], { capture: true });
  return w.ok ? w.stdout.trim() : undefined;
}

function ensureNatsServer() {
  if (findNatsServer()) return;
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  const hasApt = run("sh", ["-c", "command -v apt-get"], { capture: true }).ok;
  if (!hasApt) fail("nats-server is not installed and this machine has no apt-get. Install nats-server >= 2.9 (https://docs.nats.io) and put it on PATH, or set NATS_SERVER_BIN.");
  if (!isRoot) fail("nats-server is not installed. Run `sudo apt-get update && sudo apt-get install -y nats-server` (needs root), or set NATS_SERVER_BIN to a nats-server binary.");
  say("installing nats-server (apt-get)…");
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  if (!run("apt-get", ["update", "-qq"], { env }).ok) fail("apt-get update failed; see the output above.");
  if (!run("apt-get", ["install", "-y", "-qq", "nats-server"], { env }).ok) fail("apt-get install nats-server failed; see the output above.");
  if (!findNatsServer()) fail("nats-server was installed but no binary was found on PATH.");
}

/** Whether `protoc --version` runs and says 3.21 or newer. */
function protocVersionOk(protoc) {
  const r = run(protoc, ["--version"], { capture: true });
  const m = /libprotoc\s+(\d+)\.(\d+)/.exec(r.stdout);
  // After 3.21 protoc's versions continued as 22.x, 23.x, …
  return r.ok && !!m && (Number(m[1]) > 3 || (Number(m[1]) === 3 && Number(m[2]) >= 21));
}

/**
 * protoc (>= 3.21) and the well-known types (google/protobuf/*.proto) for `npm run generate` and the check that the
 * committed libs/proto/src/gen is current: Debian's protobuf-compiler and libprotobuf-dev (/usr/include/google/protobuf).
 * PROTOC may point at another protoc >= 3.21 (PROTOC_INCLUDE at its well-known types when not in <bin>/../include).
 */
function ensureProtoc() {
  if (process.env.PROTOC) {
    if (protocVersionOk(process.env.PROTOC)) return;
    fail(`PROTOC=${process.env.PROTOC} is not a runnable protoc >= 3.21. Unset it to use Debian's protobuf-compiler, or point it at a newer protoc.`);
  }
  const hasProtoc = run("sh", ["-c", "command -v protoc"], { capture: true }).ok;
  const hasWellKnown = existsSync("/usr/include/google/protobuf/timestamp.proto");
  if (hasProtoc && !protocVersionOk("protoc")) fail("the protoc on PATH is older than 3.21. Install Debian's protobuf-compiler (>= 3.21, bookworm or newer), or set PROTOC to a protoc >= 3.21.");
  if (hasProtoc && hasWellKnown) return;
  const packages = [...(hasProtoc ? [] : ["protobuf-compiler"]), ...(hasWellKnown ? [] : ["libprotobuf-dev"])];
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  const hasApt = run("sh", ["-c", "command -v apt-get"], { capture: true }).ok;
  if (!hasApt) fail(`${packages.join(" and ")} ${packages.length > 1 ? "are" : "is"} not installed and this machine has no apt-get. Install protoc >= 3.21 with its well-known types (https://github.com/protocolbuffers/protobuf/releases) and set PROTOC (and PROTOC_INCLUDE when google/protobuf/*.proto is not in <bin>/../include).`);
  if (!isRoot) fail(`protoc is needed to generate and check libs/proto/src/gen. Run \`sudo apt-get update && sudo apt-get install -y ${packages.join(" ")}\` (needs root), or set PROTOC to a protoc >= 3.21.`);
  say(`installing ${packages.join(" ")} (apt-get)…`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  if (!run("apt-get", ["update", "-qq"], { env }).ok) fail("apt-get update failed; see the output above.");
  if (!run("apt-get", ["install", "-y", "-qq", ...packages], { env }).ok) fail(`apt-get install ${packages.join(" ")} failed; see the output above.`);
  if (!protocVersionOk("protoc")) fail("protobuf-compiler was installed but no protoc >= 3.21 was found on PATH.");
  if (!existsSync("/usr/include/google/protobuf/timestamp.proto")) fail("libprotobuf-dev was installed but /usr/include/google/protobuf/timestamp.proto is missing.");
}

/** The package index pip is configured with on this machine (read from `pip config list`), passed as its index. */
function pipIndexArgs(python) {
  if (process.env.PIP_INDEX_URL) return [];
  const r = run(python, ["-m", "pip", "config", "list"], { capture: true });
  if (!r.ok) return [];
  const values = {};
  for (const line of r.stdout.split("\n")) {
    const m = /^([\w:.-]+)\.([\w-]+)='(.*)'$/.exec(line.trim());
    if (m) values[m[2]] = (values[m[2]] ?? []).concat(m[3].split(/\s+/).filter(Boolean));
  }
  const index = values["index-url"] ?? [];
  const extra = values["extra-index-url"] ?? [];
  // A machine configured with only extra indexes (a local mirror) cannot reach the default index: make the first
  // configured one the index so pip does not spend minutes retrying an unreachable default.
  const indexes = [...index, ...extra];
  if (indexes.length === 0) return [];
  return ["--index-url", indexes[0], ...indexes.slice(1).flatMap((u) => ["--extra-index-url", u])];
}

function ensureWorkerVenv() {
  const requirements = join(workerDir, "requirements.txt");
  const hash = createHash("sha256").update(readFileSync(requirements)).digest("hex");
  const stamp = join(venv, ".ragtune-requirements.sha256");
  const python = join(venv, "bin", "python");
  if (existsSync(python) && existsSync(stamp) && readFileSync(stamp, "utf8").trim() === hash) return;
  const sys = ["python3.11", "python3"].find((p) => run(p, ["--version"], { capture: true }).ok);
  if (!sys) fail("python3 (>= 3.11) is needed for the trainer worker. Install it (e.g. `apt-get install -y python3 python3-venv`).");
  if (!existsSync(python)) {
    say(`creating the trainer worker environment in ${venv}…`);
    if (!run(sys, ["-m", "venv", venv]).ok) fail("python3 -m venv failed: install the venv module (e.g. `apt-get install -y python3-venv`).");
  }
  say("installing the trainer worker's pinned requirements…");
  const args = ["-m", "pip", "install", "--disable-pip-version-check", "-q", ...pipIndexArgs(sys), "-r", requirements];
  if (!run(python, args).ok) fail("pip install of services/trainer/worker/requirements.txt failed; see the output above.");
  writeFileSync(stamp, hash + "\n");
  say("trainer worker environment ready.");
}

/**
 * kubectl (>= 1.27: its built-in kustomize renders deploy/k8s for tools/test/deploy.test.ts). Installed from apt where a
 * repository offers the `kubectl` package (the Kubernetes or Google Cloud SDK repositories); Debian's own
 * kubernetes-client is too old to render the overlays. Without it the deploy test fails and says so.
 */
function ensureKubectl() {
  if (run("kubectl", ["version", "--client"], { capture: true }).ok) return;
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  const hasApt = run("sh", ["-c", "command -v apt-get"], { capture: true }).ok;
  const candidate = hasApt ? run("apt-cache", ["policy", "kubectl"], { capture: true }).stdout : "";
  if (isRoot && /Candidate: (?!\(none\))/.test(candidate)) {
    say("installing kubectl (apt-get)…");
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    if (run("apt-get", ["install", "-y", "-qq", "kubectl"], { env }).ok) return;
  }
  say("WARNING: kubectl is not installed and no apt repository here offers it; tools/test/deploy.test.ts will fail. " +
    "Install kubectl >= 1.27 (https://kubernetes.io/docs/tasks/tools/) and put it on PATH.");
}

/**
 * The dashboard's browser test drives Debian's Chromium headless through playwright-core (Playwright's own browser
 * downloads are not used). Installed with apt-get when missing and possible; CHROMIUM_PATH points at another build.
 */
function ensureChromium() {
  const path = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
  if (existsSync(path)) return;
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  const hasApt = run("sh", ["-c", "command -v apt-get"], { capture: true }).ok;
  if (isRoot && hasApt) {
    say("installing chromium (apt-get) for the dashboard's browser test…");
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    const candidate = run("apt-cache", ["policy", "chromium"], { capture: true }).stdout;
    if (!/Candidate: (?!\(none\))/.test(candidate)) run("apt-get", ["update", "-qq"], { env });
    if (run("apt-get", ["install", "-y", "-qq", "chromium"], { env }).ok && existsSync(path)) return;
  }
  say(`WARNING: no Chromium at ${path}; services/gateway/test/dashboard.test.ts will fail. ` +
    "Install it (`sudo apt-get install -y chromium`) or set CHROMIUM_PATH to a Chromium binary.");
}

ensureNatsServer();
ensureProtoc();
ensureWorkerVenv();
ensureKubectl();
ensureChromium();
