/**
 * The load side of a latency benchmark on a 2-core machine: an HTTP/1.1 client and an instantly answering endpoint on
 * raw keep-alive sockets, so that the sender and the stand-in model take as little of the CPU the contestant needs as
 * they can (node:http costs about a millisecond of CPU per request and response here: at 500 requests/s half a core
 * would go to the bench itself). Both sides speak just what the benchmark needs: requests with a content-length,
 * responses with a content-length or chunked.
 */
import { fork } from "node:child_process";
import { createServer as createHttpServer } from "node:http";
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { fileURLToPath } from "node:url";

const HEAD_END = Buffer.from("\r\n\r\n");
const CRLF = Buffer.from("\r\n");

/** One parsed HTTP/1.1 message off a byte stream: `undefined` until it is complete. */
function takeMessage(buf: Buffer): { head: string; body: Buffer; rest: Buffer } | undefined {
  const headEnd = buf.indexOf(HEAD_END);
  if (headEnd < 0) return undefined;
  const head = buf.toString("latin1", 0, headEnd);
  const start = headEnd + 4;
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  if (length !== null) {
    const end = start + Number(length[1]);
    return buf.length < end ? undefined : { head, body: buf.subarray(start, end), rest: buf.subarray(end) };
  }
  if (!/\r\ntransfer-encoding:\s*chunked/i.test(head)) return { head, body: Buffer.alloc(0), rest: buf.subarray(start) };
  const parts: Buffer[] = [];
  let at = start;
  for (;;) {
    const lineEnd = buf.indexOf(CRLF, at);
    if (lineEnd < 0) return undefined;
    const size = parseInt(buf.toString("latin1", at, lineEnd), 16);
    const dataEnd = lineEnd + 2 + size;
    if (buf.length < dataEnd + 2) return undefined;
    if (size === 0) return { head, body: Buffer.concat(parts), rest: buf.subarray(dataEnd + 2) };
    parts.push(buf.subarray(lineEnd + 2, dataEnd));
    at = dataEnd + 2;
  }
}

/**
 * An endpoint that answers every request on it with `response` (a JSON body) at once, in a process of its own: the
 * model endpoint is another process in every deployment, so a request to it crosses processes (on a VM, a wake-up of
 * another vCPU's thread) both for the anchor and for the contestant, and the bench process's pauses (its garbage
 * collection, a burst of sends) do not hold answers the contestant is waiting for.
 */
export function forkInstantEndpoint(response: unknown): Promise<{ url: string; close(): void }> {
  return forkServer(["--serve-instant", JSON.stringify(response)]);
}

/**
 * A forwarding proxy in a process of its own, the floor under any gateway: node's HTTP server (as the gateway's) takes
 * each POST, sends its body unchanged to `target` + `path` over a keep-alive connection and answers with what came
 * back. It does no other work, so its latency over the target's is what one more process and HTTP hop costs on this
 * machine (the scheduling of one more process included).
 */
export function forkForwardingProxy(target: string, path: string): Promise<{ url: string; close(): void }> {
  return forkServer(["--serve-proxy", target, path]);
}

async function forkServer(args: string[]): Promise<{ url: string; close(): void }> {
  const child = fork(fileURLToPath(import.meta.url), args, { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const url = await new Promise<string>((resolve, reject) => {
    child.once("message", (m) => resolve((m as { url: string }).url));
    child.once("exit", (code) => reject(new Error(`${args[0]} exited with ${code} before it listened`)));
  });
  return {
    url,
    close() {
      child.kill();
    },
  };
}

async function serveProxy(target: string, path: string): Promise<void> {
  const upstream = new URL(target);
  const client = new LeanHttpClient(upstream.hostname, Number(upstream.port));
  const server = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      client.post(path, Buffer.concat(chunks).toString("utf8")).then(
        (answer) => {
          res.writeHead(answer.status, { "content-type": "application/json", "content-length": answer.body.byteLength });
          res.end(answer.body);
        },
        () => {
          res.writeHead(502).end();
        },
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  process.send!({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
  process.on("disconnect", () => {
    client.destroy();
    server.close();
    server.closeAllConnections();
  });
}

/** An endpoint in this process that answers every request on it with `response` (a JSON body) at once. */
export async function startInstantEndpoint(response: unknown): Promise<{ url: string; close(): void }> {
  const body = JSON.stringify(response);
  const reply = Buffer.from(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: keep-alive\r\n\r\n${body}`);
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    let buf: Buffer = Buffer.alloc(0);
    socket.on("data", (d: Buffer) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      for (let m = takeMessage(buf); m !== undefined; m = takeMessage(buf)) {
        buf = m.rest;
        socket.write(reply);
      }
    });
    socket.on("error", () => socket.destroy());
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

interface Pending {
  resolve: (r: { status: number; body: Buffer }) => void;
  reject: (err: Error) => void;
}

/** A pool of keep-alive connections to one host: each request takes the longest idle connection, or opens one. */
export class LeanHttpClient {
  readonly #idle: Socket[] = [];
  readonly #all = new Set<Socket>();
  readonly #waiting = new WeakMap<Socket, Pending>();

  constructor(
    private readonly host: string,
    private readonly port: number,
  ) {}

  /** POSTs a JSON `body` to `path`; the status and the body of the answer. */
  post(path: string, body: string): Promise<{ status: number; body: Buffer }> {
    const bytes = Buffer.from(`POST ${path} HTTP/1.1\r\nhost: ${this.host}:${this.port}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    // The connection idle the longest: requests rotate over every open connection, as a load balancer spreads them,
    // so a server whose processes take connections in turn (node:cluster) gets an even share in each process.
    const socket = this.#idle.shift() ?? this.#open();
    return new Promise((resolve, reject) => {
      this.#waiting.set(socket, { resolve, reject });
      socket.write(bytes);
    });
  }

  /** Connections opened (the most requests ever in flight at once). */
  get connections(): number {
    return this.#all.size;
  }

  destroy(): void {
    for (const s of this.#all) s.destroy();
  }

  #open(): Socket {
    const socket = connect(this.port, this.host);
    socket.setNoDelay(true);
    this.#all.add(socket);
    let buf: Buffer = Buffer.alloc(0);
    const fail = (err: Error) => {
      this.#all.delete(socket);
      const i = this.#idle.indexOf(socket);
      if (i >= 0) this.#idle.splice(i, 1);
      const p = this.#waiting.get(socket);
      this.#waiting.delete(socket);
      p?.reject(err);
    };
    socket.on("data", (d: Buffer) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      const m = takeMessage(buf);
      if (m === undefined) return;
      buf = m.rest;
      const p = this.#waiting.get(socket);
      this.#waiting.delete(socket);
      this.#idle.push(socket);
      p?.resolve({ status: Number(m.head.slice(9, 12)), body: m.body });
    });
    socket.on("error", fail);
    socket.on("close", () => fail(new Error("connection closed")));
    return socket;
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv[2] === "--serve-instant") {
    const endpoint = await startInstantEndpoint(JSON.parse(process.argv[3]!));
    process.send!({ url: endpoint.url });
    process.on("disconnect", () => endpoint.close());
  } else if (process.argv[2] === "--serve-proxy") {
    await serveProxy(process.argv[3]!, process.argv[4]!);
  }
}
