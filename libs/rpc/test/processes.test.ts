import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterEach, describe, expect, it } from "vitest";
import { createClient } from "../src/index.js";
import { TestService } from "./fixtures.js";

/** The fixture main.ts (runService) as a child process with FIXTURE_PROCESSES processes; its log lines as they come. */
function start(env: Record<string, string>) {
  const repoRoot = join(import.meta.dirname, "..", "..", "..");
  const child = spawn(process.execPath, ["--conditions=@ragtune/source", "--import", "tsx", join(import.meta.dirname, "fixture-main.ts")], {
    cwd: repoRoot,
    env: { PATH: process.env.PATH, RPC_PORT: "0", RPC_HOST: "127.0.0.1", LOG_LEVEL: "info", ...env },
    stdio: ["pipe", "pipe", "pipe"],
  }) as ChildProcessWithoutNullStreams;
  const lines: Record<string, unknown>[] = [];
  const waiters: { match: (l: Record<string, unknown>[]) => boolean; resolve: () => void }[] = [];
  createInterface({ input: child.stdout }).on("line", (text) => {
    lines.push(JSON.parse(text) as Record<string, unknown>);
    for (const w of [...waiters]) if (w.match(lines)) (waiters.splice(waiters.indexOf(w), 1), w.resolve());
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  /** Resolves once the lines so far satisfy `match` (or rejects when the child exits first). */
  const until = (match: (l: Record<string, unknown>[]) => boolean, options: { afterExit?: boolean } = {}): Promise<void> =>
    match(lines)
      ? Promise.resolve()
      : new Promise<void>((resolve, reject) => {
          waiters.push({ match, resolve });
          if (options.afterExit !== true) child.once("exit", () => reject(new Error(`the service exited before the expected log lines; stderr: ${stderr}`)));
        });
  const pidsWith = (msg: string) => [...new Set(lines.filter((l) => l.msg === msg).map((l) => l.pid as number))];
  return { child, lines, until, pidsWith, stderr: () => stderr, exited: once(child, "exit") as Promise<[number | null, string | null]> };
}

const children: ChildProcessWithoutNullStreams[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill("SIGKILL");
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Echo calls, each over a client of its own (its own HTTP/2 connection: the primary hands connections out in turn). */
async function echoes(url: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await createClient(TestService, { baseUrl: url, protocol: "grpc" }).echo({ service: "ok" });
}

async function handledEchoes(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("grpc_server_handled_total{") && l.includes('grpc_method="Echo"') && l.includes('grpc_code="OK"'));
  return line === undefined ? 0 : Number(line.split(" ").at(-1));
}

describe("a service run as several processes on one port (processes.ts)", () => {
  it("serves from each, sums their metrics, replaces one that dies, and stops them all on SIGTERM", async () => {
    const s = start({ FIXTURE_PROCESSES: "2" });
    children.push(s.child);
    await s.until(() => s.pidsWith("rpc server listening").length === 2);
    const urls = new Set(s.lines.filter((l) => l.msg === "rpc server listening").map((l) => l.url as string));
    expect(urls.size).toBe(1); // one port
    const url = [...urls][0]!;
    const [first, second] = s.pidsWith("rpc server listening");
    expect(first).not.toBe(s.child.pid);

    await echoes(url, 8);
    await s.until(() => s.lines.filter((l) => l.msg === "rpc finished").length === 8);
    expect(s.pidsWith("rpc finished").sort()).toEqual([first, second].sort()); // both processes answered
    // Whichever process a scrape reaches, it reports the calls of both.
    expect(await handledEchoes(url)).toBe(8);
    expect(await handledEchoes(url)).toBe(8);

    process.kill(first!, "SIGKILL");
    await s.until(() => s.lines.some((l) => l.msg === "a fixture process died; starting another" && l.processPid === first));
    await s.until(() => s.pidsWith("rpc server listening").length === 3);
    const third = s.pidsWith("rpc server listening").find((p) => p !== first && p !== second)!;
    await echoes(url, 4);
    expect(await handledEchoes(url)).toBeGreaterThanOrEqual(4); // the dead process's counts are gone with it

    s.child.kill("SIGTERM");
    const [code] = await s.exited;
    expect(code).toBe(0);
    expect(s.pidsWith("stopped").sort()).toEqual([second, third].sort()); // each ran its own ordered shutdown
    expect(s.lines.at(-1)?.msg).toBe("all of the service's processes stopped");
    expect(alive(second!) || alive(third)).toBe(false);
  });

  it("refuses a bad variable in the primary, before it starts any process", async () => {
    const s = start({ FIXTURE_PROCESSES: "2", RPC_DEADLINE: "soon" });
    children.push(s.child);
    const [code] = await s.exited;
    expect(code).toBe(2);
    expect(s.stderr()).toMatch(/invalid configuration for fixture: RPC_DEADLINE: expected a duration/);
    expect(s.lines.filter((l) => l.msg === "rpc server listening")).toEqual([]);
  });

  it("its processes exit when the primary is gone (no unsupervised processes left on the port)", async () => {
    const s = start({ FIXTURE_PROCESSES: "2" });
    children.push(s.child);
    await s.until(() => s.pidsWith("rpc server listening").length === 2);
    const pids = s.pidsWith("rpc server listening");
    s.child.kill("SIGKILL");
    await s.exited;
    // node:cluster ends a process whose channel to the primary closed; nothing signals that to us, so look (bounded).
    const deadline = Date.now() + 10_000;
    while (pids.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(pids.filter(alive)).toEqual([]);
  });
});
