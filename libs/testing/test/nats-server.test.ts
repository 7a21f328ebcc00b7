import { existsSync } from "node:fs";
import { createServer, connect } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { freePort, removeTempDir, startNatsServer, tempDir, type NatsServerHandle } from "../src/index.js";

interface ServerInfo {
  port: number;
  jetstream?: boolean;
  server_id: string;
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
