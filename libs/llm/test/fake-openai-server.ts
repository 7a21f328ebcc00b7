/**
 * The other side of the wire for the client's tests: a real HTTP server on 127.0.0.1 (node:http, free port) that
 * speaks the subset of the OpenAI API the client uses, answering as each test scripts it. It records every request
 * (parsed body, headers, arrival order), counts requests in flight and their maximum, and lets a test wait on
 * those counts through events instead of sleeping.
 */
import { EventEmitter } from "node:events";
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";

export interface FakeRequest {
  /** Arrival order, from 0. */
  n: number;
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  /** The client's port: equal for requests on one kept-alive connection. */
  remotePort: number | undefined;
  /** The parsed JSON body (undefined for GET). */
  body: Record<string, unknown> | undefined;
  res: ServerResponse;
  arrivedAt: number;
  /** True once the response finished or the connection went away. */
  closed: boolean;
}

export type Handler = (request: FakeRequest) => void | Promise<void>;

export class FakeServer extends EventEmitter {
  readonly requests: FakeRequest[] = [];
  inFlight = 0;
  maxInFlight = 0;
  /** Requests whose connection closed before a response was finished (client aborts, timeouts). */
  abandoned = 0;
  #server: Server;
  #sockets = new Set<Socket>();
  #handler: Handler;
  url = "";

  private constructor(handler: Handler) {
    super();
    this.#handler = handler;
    this.#server = createServer((req, res) => void this.#serve(req, res));
    this.#server.on("connection", (socket) => {
      socket.setNoDelay(true);
      this.#sockets.add(socket);
      socket.on("close", () => this.#sockets.delete(socket));
    });
  }

  static async start(handler: Handler): Promise<FakeServer> {
    const server = new FakeServer(handler);
    await new Promise<void>((resolve) => server.#server.listen(0, "127.0.0.1", resolve));
    server.url = `http://127.0.0.1:${(server.#server.address() as AddressInfo).port}/v1`;
    return server;
  }

  setHandler(handler: Handler): void {
    this.#handler = handler;
  }

  /** Resolves as soon as `predicate` holds (checked now and after every request event). */
  waitFor(predicate: () => boolean): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (!predicate()) return;
        this.off("change", check);
        resolve();
      };
      this.on("change", check);
    });
  }

  /** Requests to one path. */
  to(path: string): FakeRequest[] {
    return this.requests.filter((r) => r.path === path);
  }

  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  async #serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks).toString("utf8");
    const request: FakeRequest = {
      n: this.requests.length,
      method: req.method ?? "GET",
      path: (req.url ?? "/").split("?")[0]!,
      headers: req.headers,
      remotePort: req.socket.remotePort,
      body: raw === "" ? undefined : (JSON.parse(raw) as Record<string, unknown>),
      res,
      arrivedAt: performance.now(),
      closed: false,
    };
    this.requests.push(request);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    res.on("close", () => {
      request.closed = true;
      this.inFlight--;
      if (!res.writableFinished) this.abandoned++;
      this.emit("change");
    });
    try {
      const handled = this.#handler(request);
      this.emit("change"); // after the handler's synchronous part, so a test sees what it recorded
      await handled;
    } catch (error) {
      if (!res.headersSent) sendJson(res, 599, { error: { message: `fake server handler failed: ${String(error)}` } });
    }
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.destroyed) return;
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usage(prompt: number, completion: number): Usage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

export function chatResponse(content: string, options: { usage?: Usage | null; finishReason?: string; model?: string } = {}): unknown {
  return {
    id: "chatcmpl-test",
    object: "chat.completion",
    created: 1,
    model: options.model ?? "base",
    choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: options.finishReason ?? "stop" }],
    ...(options.usage === null ? {} : { usage: options.usage ?? usage(10, 5) }),
  };
}

export function completionResponse(text: string, options: { usage?: Usage; finishReason?: string; model?: string } = {}): unknown {
  return {
    id: "cmpl-test",
    object: "text_completion",
    created: 1,
    model: options.model ?? "base",
    choices: [{ index: 0, text, finish_reason: options.finishReason ?? "stop" }],
    usage: options.usage ?? usage(10, 5),
  };
}

/** Chat stream chunks for `pieces`, a finish chunk, and optionally a usage chunk. */
export function chatChunks(pieces: string[], options: { usage?: Usage; model?: string } = {}): unknown[] {
  const model = options.model ?? "base";
  const base = { id: "chatcmpl-test", object: "chat.completion.chunk", created: 1, model };
  const chunks: unknown[] = [{ ...base, choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }] }];
  for (const piece of pieces) chunks.push({ ...base, choices: [{ index: 0, delta: { content: piece }, finish_reason: null }] });
  chunks.push({ ...base, choices: [{ index: 0, delta: {}, finish_reason: "stop" }] });
  if (options.usage) chunks.push({ ...base, choices: [], usage: options.usage });
  return chunks;
}

/** The SSE body for `chunks` (each a `data:` event), ending with `data: [DONE]` unless `done` is false. */
export function sseBody(chunks: unknown[], options: { done?: boolean; lineEnd?: string } = {}): string {
  const end = options.lineEnd ?? "\n";
  let body = "";
  for (const chunk of chunks) body += `data: ${JSON.stringify(chunk)}${end}${end}`;
  if (options.done ?? true) body += `data: [DONE]${end}${end}`;
  return body;
}

/**
 * Starts an event stream and writes `body` in pieces cut at the given byte offsets (so a cut can fall inside a
 * UTF-8 character), each write flushed before the next. Ends the response unless `end` is false.
 */
export async function writeInPieces(res: ServerResponse, body: string | Buffer, cuts: number[], end = true): Promise<void> {
  const bytes = typeof body === "string" ? Buffer.from(body, "utf8") : body;
  if (!res.headersSent) {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    res.flushHeaders();
  }
  const offsets = [...new Set([0, ...cuts.filter((c) => c > 0 && c < bytes.length), bytes.length])].sort((a, b) => a - b);
  for (let i = 0; i + 1 < offsets.length; i++) {
    if (res.destroyed) return;
    await new Promise<void>((resolve) => res.write(bytes.subarray(offsets[i], offsets[i + 1]), () => resolve()));
    await new Promise<void>((resolve) => setImmediate(resolve)); // let each piece leave as its own segment
  }
  if (end) res.end();
}
