/**
 * The load side of a latency benchmark on a 2-core machine: an HTTP/1.1 client and an instantly answering endpoint on
 * raw keep-alive sockets, so that the sender and the stand-in model take as little of the CPU the contestant needs as
 * they can (node:http costs about a millisecond of CPU per request and response here: at 500 requests/s half a core
 * would go to the bench itself). Both sides speak just what the benchmark needs: requests with a content-length,
 * responses with a content-length or chunked.
 */
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";

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

/** An endpoint that answers every request on it with `response` (a JSON body) at once. */
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
