/**
 * The raw-socket HTTP/1.1 transport against a server that writes exact bytes: the framings a model endpoint or a
 * proxy in front of it may use, connection reuse, and malformed responses as errors (never a hang or a wrong body).
 */
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { type AbortHook, HttpTransport, type HttpResponse } from "../src/http-transport.js";

let server: Server | undefined;
const sockets = new Set<Socket>();
afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets.clear();
  await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  server = undefined;
});

/** A server that answers the n-th request it reads (on any connection) with replies[n] (raw bytes, written in pieces). */
async function rawServer(replies: (string | string[])[]): Promise<{ url: URL; requests: string[]; connections: () => number }> {
  const requests: string[] = [];
  let connections = 0;
  server = createServer((socket) => {
    connections++;
    sockets.add(socket);
    let pending = "";
    socket.on("data", async (d: Buffer) => {
      pending += d.toString("latin1");
      for (;;) {
        const headEnd = pending.indexOf("\r\n\r\n");
        if (headEnd < 0) return;
        const length = Number(/content-length: (\d+)/i.exec(pending.slice(0, headEnd))?.[1] ?? 0);
        if (pending.length < headEnd + 4 + length) return;
        requests.push(pending.slice(0, headEnd + 4 + length));
        pending = pending.slice(headEnd + 4 + length);
        const reply = replies[Math.min(requests.length - 1, replies.length - 1)]!;
        for (const piece of Array.isArray(reply) ? reply : [reply]) {
          if (piece === "<close>") {
            socket.end();
            return;
          }
          socket.write(piece);
          await new Promise((r) => setImmediate(r));
        }
      }
    });
    socket.on("error", () => undefined);
  });
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
  return { url: new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`), requests, connections: () => connections };
}

/** An AbortHook driven by a signal. */
function hookOf(signal: AbortSignal): AbortHook {
  let listener: (() => void) | undefined;
  signal.addEventListener("abort", () => listener?.(), { once: true });
  return {
    get aborted() {
      return signal.aborted;
    },
    listen: (l) => (listener = l),
  };
}

const post = (t: HttpTransport, body = '{"q":1}', signal = new AbortController().signal) =>
  t.send("/completions", { method: "POST", headers: HttpTransport.headerBlock({ "content-type": "application/json" }), body, abort: hookOf(signal) });
const text = async (r: HttpResponse) => (await r.readAll(1 << 20)).toString("utf8");

describe("HttpTransport", () => {
  it("sends the path under the base, the host, the headers and the body with its length", async () => {
    const s = await rawServer(["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]);
    const t = new HttpTransport(s.url);
    const r = await post(t, '{"prompt":"é"}');
    expect([r.statusCode, r.statusMessage, await text(r)]).toEqual([200, "OK", "ok"]);
    expect(s.requests[0]).toBe(`POST /v1/completions HTTP/1.1\r\nhost: ${s.url.host}\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{"prompt":"é"}`.replace("é", "\u00c3\u00a9"));
    t.close();
  });

  it("reads chunked bodies (extensions, trailers, pieces cut anywhere) and reuses the connection", async () => {
    const chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
    const s = await rawServer([chunked.match(/[\s\S]{1,3}/g)!, chunked]);
    const t = new HttpTransport(s.url);
    expect(await text(await post(t))).toBe("hello, world");
    expect(await text(await post(t))).toBe("hello, world");
    expect(s.connections()).toBe(1);
    t.close();
  });

  it("skips a 100 Continue head, joins repeated headers, and reads a body that ends with the connection", async () => {
    const s = await rawServer([["HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 429 Too Many Requests\r\nx-a: 1\r\nX-A: 2\r\nconnection: close\r\n\r\nslow", " down", "<close>"], "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]);
    const t = new HttpTransport(s.url);
    const r = await post(t);
    expect([r.statusCode, r.headers["x-a"], await text(r)]).toEqual([429, "1, 2", "slow down"]);
    expect(await text(await post(t))).toBe("ok");
    expect(s.connections()).toBe(2); // the first closed; connection: close is never reused
    t.close();
  });

  it("fails clearly on a malformed head, a bad chunk size, and a connection that closes mid-body", async () => {
    for (const reply of [
      "SMTP ready\r\n\r\n",
      "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
      ["HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", "<close>"],
      ["HTTP/1.1 200 OK\r\n", "<close>"],
    ]) {
      const s = await rawServer([reply]);
      const t = new HttpTransport(s.url);
      const error = await post(t)
        .then(text)
        .catch((e: unknown) => e as Error);
      expect(error).toBeInstanceOf(Error);
      expect((error as Error).message).toMatch(/not an HTTP\/1.x response|chunk size|closed in the middle of the response body|closed before the response/);
      t.close();
      for (const so of sockets) so.destroy();
      await new Promise<void>((resolve) => server!.close(() => resolve()));
      server = undefined;
    }
  });

  it("an abort before the response rejects and closes the connection; a too large body is refused", async () => {
    const s = await rawServer([[], "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + "x".repeat(100)]);
    const t = new HttpTransport(s.url);
    const controller = new AbortController();
    const pending = post(t, "{}", controller.signal);
    await new Promise<void>((resolve) => {
      const check = () => (s.requests.length > 0 ? resolve() : setImmediate(check));
      check();
    });
    controller.abort();
    await expect(pending).rejects.toThrow(/aborted/);
    const r = await post(t);
    await expect(r.readAll(10)).rejects.toThrow(/larger than 10 bytes/);
    expect(s.connections()).toBe(2);
    t.close();
  });

  it("refuses header values that would end the header", () => {
    expect(() => HttpTransport.headerBlock({ authorization: "Bearer x\r\nx-injected: 1" })).toThrow(/invalid HTTP header/);
  });
});
