import { existsSync } from "node:fs";
import { createServer, connect } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { freePort, removeTempDir, startNatsServer, tempDir, type NatsServerHandle } from "../src/index.js";

interface ServerInfo {
  port: number;
  jetstream?: boolean;
  server_id: string;
  auth_required?: boolean;
}

/** Opens a raw TCP connection and reads the server's INFO line (the first thing NATS sends). */
function readInfo(port: number): Promise<ServerInfo> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port });
    let buffered = "";
    socket.setEncoding("utf8");
    socket.on("data", (data: string) => {
      buffered += data;
      const end = buffered.indexOf("\r\n");
      if (end === -1) return;
      socket.destroy();
      const line = buffered.slice(0, end);
      if (!line.startsWith("INFO ")) {
        reject(new Error(`expected INFO, got ${line}`));
        return;
      }
      resolve(JSON.parse(line.slice(5)) as ServerInfo);
    });
    socket.on("error", reject);
  });
}

/**
 * Speaks just enough of the NATS protocol to log in: reads INFO, sends CONNECT with the given fields and a PING,
 * and returns the server's answer: "PONG" when it accepted the login, else its -ERR line.
 */
function login(port: number, fields: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port });
    let buffered = "";
    let sent = false;
    socket.setEncoding("utf8");
    socket.on("data", (data: string) => {
      buffered += data;
      for (let end = buffered.indexOf("\r\n"); end !== -1; end = buffered.indexOf("\r\n")) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        if (line.startsWith("INFO ") && !sent) {
          sent = true;
          socket.write(`CONNECT ${JSON.stringify({ verbose: false, pedantic: false, ...fields })}\r\nPING\r\n`);
        } else if (line === "PONG" || line.startsWith("-ERR")) {
          socket.destroy();
          resolve(line);
          return;
        }
      }
    });
    socket.on("error", reject);
  });
}

const started: NatsServerHandle[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((s) => s.stop()));
});

describe("startNatsServer", () => {
  it("starts a JetStream-enabled server on 127.0.0.1 that accepts connections", async () => {
    const server = await startNatsServer();
    started.push(server);
    expect(server.url).toBe(`nats://127.0.0.1:${server.port}`);
    const info = await readInfo(server.port);
    expect(info.port).toBe(server.port);
    expect(info.jetstream).toBe(true);
    expect(existsSync(`${server.storeDir}/jetstream`)).toBe(true);
  });

  it("can start without JetStream", async () => {
    const server = await startNatsServer({ jetstream: false });
    started.push(server);
    const info = await readInfo(server.port);
    expect(info.jetstream ?? false).toBe(false);
  });

  it("two servers get different ports", async () => {
    const [a, b] = await Promise.all([startNatsServer(), startNatsServer()]);
    started.push(a, b);
    expect(a.port).not.toBe(b.port);
    expect(a.storeDir).not.toBe(b.storeDir);
  });

  it("restart keeps the port and the store dir but is a new process", async () => {
    const server = await startNatsServer();
    started.push(server);
    const before = await readInfo(server.port);
    const pid = server.pid;
    await server.restart();
    const after = await readInfo(server.port);
    expect(server.pid).not.toBe(pid);
    expect(after.port).toBe(before.port);
    // the server identity (derived from the store) changes per process, the store dir does not
    expect(existsSync(`${server.storeDir}/jetstream`)).toBe(true);
  });

  it("kill stops the process hard; restart brings it back on the same port", async () => {
    const server = await startNatsServer();
    started.push(server);
    await server.kill();
    expect(server.pid).toBeUndefined();
    await expect(readInfo(server.port)).rejects.toThrow(/ECONNREFUSED/);
    await server.restart();
    expect((await readInfo(server.port)).port).toBe(server.port);
  });

  it("stop removes its own temp store dir but keeps a caller-given one", async () => {
    const own = await startNatsServer();
    await own.stop();
    expect(existsSync(own.storeDir)).toBe(false);
    await expect(readInfo(own.port)).rejects.toThrow(/ECONNREFUSED/);

    const dir = await tempDir("nats-test-given");
    try {
      const given = await startNatsServer({ storeDir: dir });
      expect(given.storeDir).toBe(dir);
      await given.stop();
      expect(existsSync(`${dir}/jetstream`)).toBe(true);
    } finally {
      await removeTempDir(dir);
    }
  });

  it("requires the user and password it was given, from a config file removed on stop", async () => {
    const server = await startNatsServer({ auth: { user: "ragtune", password: 'p"w $x' } });
    started.push(server);
    expect((await readInfo(server.port)).auth_required).toBe(true);
    expect(await login(server.port, { user: "ragtune", pass: 'p"w $x' })).toBe("PONG");
    expect(await login(server.port, { user: "ragtune", pass: "wrong" })).toMatch(/^-ERR 'Authorization Violation'/);
    expect(await login(server.port, {})).toMatch(/^-ERR 'Authorization Violation'/);
    // the credentials survive a restart (same config file), and JetStream is still on
    await server.restart();
    expect(await login(server.port, { user: "ragtune", pass: 'p"w $x' })).toBe("PONG");
    expect((await readInfo(server.port)).jetstream).toBe(true);
    expect(existsSync(server.configFile!)).toBe(true);
    await server.stop();
    expect(existsSync(server.configFile!)).toBe(false);
  });

  it("requires the token it was given", async () => {
    const server = await startNatsServer({ auth: { token: "s3cret-token" } });
    started.push(server);
    expect(await login(server.port, { auth_token: "s3cret-token" })).toBe("PONG");
    expect(await login(server.port, { auth_token: "guess" })).toMatch(/^-ERR 'Authorization Violation'/);
  });

  it("without auth or limits it writes no config file and lets anyone in", async () => {
    const server = await startNatsServer();
    started.push(server);
    expect(server.configFile).toBeUndefined();
    expect((await readInfo(server.port)).auth_required ?? false).toBe(false);
    expect(await login(server.port, {})).toBe("PONG");
  });

  it("refuses bad auth and storage options before starting anything", async () => {
    await expect(startNatsServer({ auth: { token: "" } })).rejects.toThrow(/auth.token must not be empty/);
    await expect(startNatsServer({ auth: { user: "u", password: "a\nb" } })).rejects.toThrow(/line breaks/);
    await expect(startNatsServer({ maxFileStore: 0 })).rejects.toThrow(/maxFileStore must be a positive/);
    await expect(startNatsServer({ jetstream: false, maxFileStore: 1024 })).rejects.toThrow(/needs JetStream/);
  });

  it("fails clearly when the binary is missing", async () => {
    await expect(startNatsServer({ bin: "/nonexistent/nats-server" })).rejects.toThrow(
      /nats-server not found at \/nonexistent\/nats-server: run `npm run setup`/,
    );
  });

  it("reports the server log when the server cannot start", async () => {
    const server = await startNatsServer();
    started.push(server);
    await server.kill();
    // Occupy the server's port so the restart fails: nats-server logs the error and exits.
    const occupier = createServer();
    await new Promise<void>((resolve) => occupier.listen({ host: "127.0.0.1", port: server.port }, resolve));
    try {
      await expect(server.restart()).rejects.toThrow(/exited before it was ready[\s\S]*address already in use/);
    } finally {
      occupier.close();
    }
  });
});

describe("freePort and tempDir", () => {
  it("freePort returns a port that can be bound", async () => {
    const port = await freePort();
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: "127.0.0.1", port }, resolve);
    });
    server.close();
  });

  it("tempDir creates distinct directories and rejects odd prefixes", async () => {
    const a = await tempDir("ragtune-x");
    const b = await tempDir("ragtune-x");
    expect(a).not.toBe(b);
    expect(existsSync(a) && existsSync(b)).toBe(true);
    await removeTempDir(a);
    await removeTempDir(b);
    expect(existsSync(a)).toBe(false);
    await expect(tempDir("../escape")).rejects.toThrow(/prefix/);
  });
});
