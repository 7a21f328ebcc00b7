import { type ChildProcess, spawn } from "node:child_process";
import { constants } from "node:fs";
import { access, writeFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { createInterface } from "node:readline";
import { removeTempDir, tempDir } from "./temp-dir.js";

export interface NatsServerOptions {
  /** Enable JetStream (`-js`). Default true. */
  jetstream?: boolean;
  /**
   * JetStream store directory. When given, the caller owns it and `stop()` leaves it in place;
   * otherwise a temp dir is created and removed on `stop()`.
   */
  storeDir?: string;
  /** Path of the nats-server binary. Default: $NATS_SERVER_BIN, else /usr/sbin/nats-server, else `nats-server` on PATH. */
  bin?: string;
  /** Upper bound on how long to wait for "Server is ready" (a deadline, not a delay). Default 20 s. */
  readyTimeoutMs?: number;
  /**
   * Run the server in its own process group, so a terminal's Ctrl-C reaches only the launching process, which then
   * stops its services before the server (the dev stack and the demo do). Default false.
   */
  detached?: boolean;
  /**
   * Make the server require credentials: a user and password, or a token. They go into a config file
   * (`-c`) written to a temp dir of its own, removed on `stop()`. Default: no authentication.
   */
  auth?: NatsServerAuth;
  /**
   * JetStream's file storage limit in bytes (`max_file_store`), e.g. to test a server whose storage is
   * full. Default: the server's own (most of the free disk).
   */
  maxFileStore?: number;
}

/** What a server started with `auth` requires. */
export type NatsServerAuth = { user: string; password: string } | { token: string };

export interface NatsServerHandle {
  /** `nats://127.0.0.1:<port>` */
  readonly url: string;
  readonly port: number;
  /** The JetStream store directory (kept across `restart()`). */
  readonly storeDir: string;
  /** PID of the current server process, or undefined while it is down. */
  readonly pid: number | undefined;
  /** SIGTERM, wait for exit, then remove the temp store dir (unless the caller gave `storeDir`). */
  stop(): Promise<void>;
  /** Stop (gracefully) and start again on the same port with the same store dir: JetStream data survives. */
  restart(): Promise<void>;
  /** SIGKILL, wait for exit. The store dir stays so `restart()` can bring the server back. */
  kill(): Promise<void>;
  /** The last log lines the server wrote (for diagnostics). */
  logs(): string[];
  /** The config file passed with `-c` (only when `auth` or `maxFileStore` was given). */
  readonly configFile: string | undefined;
}

const DEFAULT_BIN = "/usr/sbin/nats-server";
const LOG_LINES_KEPT = 200;
const LISTEN_RE = /Listening for client connections on [^\s]*:(\d+)\s*$/;
const READY_RE = /Server is ready/;

/** Processes started here that are still running; killed if the test process exits without stopping them. */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", () => {
    for (const child of live) child.kill("SIGKILL");
  });
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

async function resolveBinary(explicit: string | undefined): Promise<string> {
  const chosen = explicit ?? process.env.NATS_SERVER_BIN;
  if (chosen !== undefined && chosen !== "") {
    if (await isExecutable(chosen)) return chosen;
    throw new Error(`nats-server not found at ${chosen}: run \`npm run setup\` (or fix NATS_SERVER_BIN)`);
  }
  if (await isExecutable(DEFAULT_BIN)) return DEFAULT_BIN;
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, "nats-server");
    if (await isExecutable(candidate)) return candidate;
  }
  throw new Error("nats-server not found: run `npm run setup`");
}

interface Running {
  child: ChildProcess;
  port: number;
  exited: Promise<void>;
}

/**
 * Spawns nats-server on 127.0.0.1 and resolves once it logs "Server is ready" (it is then accepting
 * client connections). `port` 0 lets the server pick a free port (`-p -1`), read back from its log.
 */
function launch(
  bin: string,
  port: number,
  jetstream: boolean,
  storeDir: string,
  logs: string[],
  readyTimeoutMs: number,
  detached: boolean,
  configFile: string | undefined,
): Promise<Running> {
  const args = ["-a", "127.0.0.1", "-p", port === 0 ? "-1" : String(port)];
  if (configFile !== undefined) args.push("-c", configFile);
  if (jetstream) args.push("-js", "-sd", storeDir);
  const child = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"], detached });
  live.add(child);
  installExitHook();
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      live.delete(child);
      resolve();
    });
    // A spawn error (e.g. EACCES) emits "error" and possibly no "exit".
    child.once("error", () => {
      live.delete(child);
      resolve();
    });
  });

  return new Promise<Running>((resolve, reject) => {
    let listenPort: number | undefined;
    let settled = false;
    const tail = () => logs.slice(-20).join("\n");
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(err);
    };
    const timer = setTimeout(
      () => fail(new Error(`nats-server did not become ready within ${readyTimeoutMs} ms; last log lines:\n${tail()}`)),
      readyTimeoutMs,
    );
    timer.unref();

    const lines = createInterface({ input: child.stderr! });
    lines.on("line", (line) => {
      logs.push(line);
      if (logs.length > LOG_LINES_KEPT) logs.splice(0, logs.length - LOG_LINES_KEPT);
      if (settled) return;
      const listen = LISTEN_RE.exec(line);
      if (listen) listenPort = Number(listen[1]);
      if (READY_RE.test(line)) {
        if (listenPort === undefined) {
          fail(new Error(`nats-server is ready but never logged its client port; last log lines:\n${tail()}`));
          return;
        }
        settled = true;
        clearTimeout(timer);
        resolve({ child, port: listenPort, exited });
      }
    });
    child.once("error", (err) => fail(new Error(`could not start nats-server (${bin}): ${err.message}`)));
    child.once("exit", (code, signal) =>
      fail(new Error(`nats-server exited before it was ready (code ${code}, signal ${signal}); last log lines:\n${tail()}`)),
    );
  });
}

/** A quoted string in nats-server's config syntax (JSON escapes are understood; `$` stays literal in quotes). */
function confString(value: string): string {
  if (/[\r\n]/.test(value)) throw new Error("nats-server credentials must not contain line breaks");
  return JSON.stringify(value);
}

/** The config file text for `auth` and `maxFileStore`, or undefined when neither is set. */
function configText(options: NatsServerOptions): string | undefined {
  const lines: string[] = [];
  if (options.auth !== undefined) {
    if ("token" in options.auth) {
      if (options.auth.token === "") throw new Error("startNatsServer: auth.token must not be empty");
      lines.push(`authorization { token: ${confString(options.auth.token)} }`);
    } else {
      if (options.auth.user === "" || options.auth.password === "") throw new Error("startNatsServer: auth.user and auth.password must not be empty");
      lines.push(`authorization { user: ${confString(options.auth.user)}, password: ${confString(options.auth.password)} }`);
    }
  }
  if (options.maxFileStore !== undefined) {
    if (options.jetstream === false) throw new Error("startNatsServer: maxFileStore needs JetStream (jetstream: true)");
    if (!Number.isSafeInteger(options.maxFileStore) || options.maxFileStore <= 0) {
      throw new Error(`startNatsServer: maxFileStore must be a positive whole number of bytes, got ${options.maxFileStore}`);
    }
    lines.push(`jetstream { max_file_store: ${options.maxFileStore} }`);
  }
  return lines.length === 0 ? undefined : `${lines.join("\n")}\n`;
}

/**
 * Starts a real nats-server for tests and the dev stack: 127.0.0.1, a free port, JetStream in a
 * temp store dir (or the given one), optionally requiring credentials (`auth`) or with a small
 * JetStream storage limit (`maxFileStore`). Resolves when the server accepts connections.
 */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServerHandle> {
  const bin = await resolveBinary(options.bin);
  const jetstream = options.jetstream ?? true;
  const config = configText(options);
  const ownsStoreDir = options.storeDir === undefined;
  const storeDir = options.storeDir ?? (await tempDir("ragtune-nats"));
  const readyTimeoutMs = options.readyTimeoutMs ?? 20_000;
  const logs: string[] = [];
  // The config file lives apart from the store dir, which may be the caller's.
  const configDir = config === undefined ? undefined : await tempDir("ragtune-nats-conf");
  const configFile = configDir === undefined ? undefined : join(configDir, "nats-server.conf");
  const removeOwnDirs = async () => {
    if (ownsStoreDir) await removeTempDir(storeDir);
    if (configDir !== undefined) await removeTempDir(configDir);
  };

  let running: Running | undefined;
  try {
    if (configFile !== undefined) await writeFile(configFile, config!, { mode: 0o600 });
    running = await launch(bin, 0, jetstream, storeDir, logs, readyTimeoutMs, options.detached ?? false, configFile);
  } catch (err) {
    await removeOwnDirs();
    throw err;
  }
  const port = running.port;

  const terminate = async (signal: NodeJS.Signals) => {
    const current = running;
    running = undefined;
    if (current === undefined) return;
    if (current.child.exitCode === null && current.child.signalCode === null) current.child.kill(signal);
    await current.exited;
  };

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    configFile,
    get pid() {
      return running?.child.pid;
    },
    async stop() {
      await terminate("SIGTERM");
      await removeOwnDirs();
    },
    async restart() {
      await terminate("SIGTERM");
      running = await launch(bin, port, jetstream, storeDir, logs, readyTimeoutMs, options.detached ?? false, configFile);
    },
    async kill() {
      await terminate("SIGKILL");
    },
    logs() {
      return [...logs];
    },
  };
}
