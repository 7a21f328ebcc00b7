import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, startNatsServer, type NatsServerHandle } from "@ragtune/testing";

export const SERVICE_NAMES = ["ingest", "dataset", "trainer", "eval", "gateway"] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

/** How long a service may take from spawn to "rpc server listening" (tsx compiles on first start). */
const READY_TIMEOUT_MS = 120_000;

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

export interface StackService {
  name: ServiceName;
  url: string;
  process: ChildProcess;
}

export interface Stack {
  nats: NatsServerHandle;
  natsUrl: string;
  services: Record<ServiceName, StackService>;
  /** The local model server, when `modelServer` was given: its OpenAI-compatible `…/v1` URL. */
  modelServer?: { baseUrl: string; process: ChildProcess };
  /**
   * Starts another instance of a service on a free port, wired like the first (e.g. a gateway replacing one killed
   * with SIGKILL); it becomes `services[name]` and stops with the stack.
   */
  startAnother(name: ServiceName, env?: Record<string, string>): Promise<StackService>;
  stop(): Promise<void>;
}

/** The local model server (tools/model-server) the stack starts before the services, as a child process. */
export interface StackModelServer {
  /** The base model's GGUF file (the tiny model's model.gguf). */
  model: string;
  /** The base model's name in requests (default "base"). */
  servedModelName?: string;
  /** LoRA adapters (GGUF) served from the start, by name. */
  loraModules?: { name: string; path: string }[];
  /** Generations at once (default the server's). */
  concurrency?: number;
  /** Tokens per sequence (default the server's). */
  contextSize?: number;
}

export interface StackOptions {
  /** Where JetStream keeps its files; a temp dir (removed on stop) when unset. */
  storeDir?: string;
  /** First RPC port; services take consecutive ports. Free ports are picked when unset. */
  portBase?: number;
  /** Extra environment for every service (e.g. LOG_LEVEL, TRAINER_* settings). */
  env?: Record<string, string>;
  /** Receives every log line of every service, already parsed (or raw text when not JSON). */
  onLog?: (service: ServiceName | "model-server", line: Record<string, unknown> | string) => void;
  /** Which services to start; all five by default. */
  only?: readonly ServiceName[];
  /**
   * Start the local model server first (port `portBase - 1` with a port base, else a free one); the dataset, eval and
   * gateway services get it as LLM_BASE_URL and its base model as LLM_MODEL.
   */
  modelServer?: StackModelServer;
}

/**
 * Start nats-server (JetStream) and the ragtune services as child processes, each on its own RPC port, and resolve
 * once every service has logged that it is listening. stop() sends SIGTERM to each service, waits for it to exit,
 * then stops nats-server.
 */
export async function startStack(options: StackOptions = {}): Promise<Stack> {
  // Every child runs in its own process group: a terminal's Ctrl-C reaches only this process, which stops the
  // services first and nats-server last (otherwise the server would go down under draining services).
  const nats = await startNatsServer({ storeDir: options.storeDir, detached: true });
  const started: StackService[] = [];
  const names = options.only ?? SERVICE_NAMES;
  let modelServer: Stack["modelServer"];
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await Promise.all(started.map((s) => stopProcess(s.process)));
      if (modelServer !== undefined) await stopProcess(modelServer.process);
      await nats.stop();
    })());
  // The children live in their own process groups; if this process ends without stop(), do not leave them behind.
  process.once("exit", () => {
    for (const p of [...started.map((s) => s.process), ...(modelServer ? [modelServer.process] : [])]) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  });
  const llm: Record<string, string> = {};
  // Services that read another service's API get its URL (it started earlier: SERVICE_NAMES is in data-flow order).
  const wiringOf = (name: ServiceName): Record<string, string> => {
    const urls = Object.fromEntries(started.map((x) => [x.name, x.url]));
    return {
      ...(name === "dataset" && urls.ingest ? { DATASET_INGEST_URL: urls.ingest } : {}),
      ...(name === "eval" && urls.dataset ? { EVAL_DATASET_URL: urls.dataset } : {}),
      ...(name === "gateway"
        ? {
            ...(urls.ingest ? { GATEWAY_INGEST_URL: urls.ingest } : {}),
            ...(urls.dataset ? { GATEWAY_DATASET_URL: urls.dataset } : {}),
            ...(urls.trainer ? { GATEWAY_TRAINER_URL: urls.trainer } : {}),
            ...(urls.eval ? { GATEWAY_EVAL_URL: urls.eval } : {}),
            // The local model server loads LoRA adapters as GGUF files.
            ...(modelServer !== undefined ? { GATEWAY_LORA_FORMAT: "gguf" } : {}),
          }
        : {}),
      ...(name === "dataset" || name === "eval" || name === "gateway" ? llm : {}),
    };
  };
  try {
    if (options.modelServer !== undefined) {
      const port = options.portBase ? options.portBase - 1 : await freePort();
      modelServer = await startModelServerProcess(options.modelServer, port, options);
      llm["LLM_BASE_URL"] = modelServer.baseUrl;
      llm["LLM_MODEL"] = options.modelServer.servedModelName ?? "base";
    }
    let index = 0;
    for (const name of names) {
      const port = options.portBase ? options.portBase + index : await freePort();
      index += 1;
      started.push(await startService(name, port, nats.url, { ...options, env: { ...options.env, ...wiringOf(name) } }));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const services = Object.fromEntries(started.map((s) => [s.name, s])) as Record<ServiceName, StackService>;
  const startAnother = async (name: ServiceName, env: Record<string, string> = {}): Promise<StackService> => {
    const service = await startService(name, await freePort(), nats.url, { ...options, env: { ...options.env, ...wiringOf(name), ...env } });
    started.push(service);
    services[name] = service;
    return service;
  };
  return { nats, natsUrl: nats.url, services, ...(modelServer === undefined ? {} : { modelServer }), startAnother, stop };
}

/** The model server from tools/model-server/src/main.ts with vLLM-style flags; ready at its "model server listening" line. */
async function startModelServerProcess(config: StackModelServer, port: number, options: StackOptions): Promise<NonNullable<Stack["modelServer"]>> {
  const main = join(repoRoot, "tools", "model-server", "src", "main.ts");
  const args = ["--model", config.model, "--served-model-name", config.servedModelName ?? "base", "--host", "127.0.0.1", "--port", String(port)];
  if (config.loraModules !== undefined && config.loraModules.length > 0) args.push("--lora-modules", ...config.loraModules.map((m) => `${m.name}=${m.path}`));
  if (config.concurrency !== undefined) args.push("--concurrency", String(config.concurrency));
  if (config.contextSize !== undefined) args.push("--context-size", String(config.contextSize));
  const child = spawn(process.execPath, ["--conditions=@ragtune/source", "--import", "tsx", main, ...args], {
    cwd: repoRoot,
    env: { ...process.env, LOG_LEVEL: "info" },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  const url = await readyUrl("model-server", child, "model server listening", options);
  return { baseUrl: `${url}/v1`, process: child };
}

async function startService(name: ServiceName, port: number, natsUrl: string, options: StackOptions): Promise<StackService> {
  const main = join(repoRoot, "services", name, "src", "main.ts");
  // Readiness is the service's "rpc server listening" info line, so services log at info at least; quieter levels
  // are the caller's to apply when it shows lines (onLog).
  const level = options.env?.LOG_LEVEL ?? process.env.LOG_LEVEL;
  const LOG_LEVEL = level === "trace" || level === "debug" ? level : "info";
  const child = spawn(process.execPath, ["--conditions=@ragtune/source", "--import", "tsx", main], {
    cwd: repoRoot,
    env: { ...process.env, ...options.env, LOG_LEVEL, NATS_URL: natsUrl, RPC_HOST: "127.0.0.1", RPC_PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  const url = await readyUrl(name, child, "rpc server listening", options);
  return { name, url, process: child };
}

/** Passes the child's log lines to onLog and resolves with the `url` of its first `ready` line. */
function readyUrl(name: ServiceName | "model-server", child: ChildProcess, ready: string, options: StackOptions): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${name} did not report "${ready}" within ${READY_TIMEOUT_MS / 1000} s`));
    }, READY_TIMEOUT_MS);
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with code ${code} before it was ready`));
    };
    child.once("exit", onExit);
    const readers = [child.stdout!, child.stderr!].map((stream) => ({ stream, lines: createInterface({ input: stream }) }));
    for (const { lines } of readers) {
      lines.on("line", (text) => {
        let line: Record<string, unknown> | string = text;
        try {
          line = JSON.parse(text) as Record<string, unknown>;
        } catch {
          // not a JSON log line: pass it on as text
        }
        options.onLog?.(name, line);
        if (typeof line === "object" && line.msg === ready && typeof line.url === "string") {
          child.off("exit", onExit);
          clearTimeout(timer);
          resolve(line.url);
          if (options.onLog === undefined) {
            // Nobody reads the lines from here on: they are drained unparsed (a benchmark's sender shares this thread).
            for (const r of readers) {
              r.lines.close();
              r.stream.resume();
            }
          }
        }
      });
    }
  });
}

async function stopProcess(child: ChildProcess, timeoutMs = 20_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  await exited;
  clearTimeout(timer);
}

/** One readable line from a pino JSON log line: time, service, level, message, and the interesting fields. */
export function formatLogLine(service: string, line: Record<string, unknown> | string): string {
  if (typeof line === "string") return `${service.padEnd(8)} ${line}`;
  const { level, msg, time, svc: _svc, pid: _pid, hostname: _host, ...rest } = line;
  const t = typeof time === "string" ? time.slice(11, 23) : "";
  const extra = Object.keys(rest).length ? " " + JSON.stringify(rest) : "";
  return `${t} ${service.padEnd(8)} ${String(level ?? "").padEnd(5)} ${String(msg ?? "")}${extra}`;
}
