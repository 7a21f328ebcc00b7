import { isIP, connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";

/** Header lookup of a response (the part of the Fetch `Headers` interface the client reads). */
export interface HeaderLookup {
  get(name: string): string | null;
}

export function headerLookup(response: HttpResponse): HeaderLookup {
  return { get: (name) => response.headers[name.toLowerCase()] ?? null };
}

/**
 * How the caller stops a request (lighter than an AbortSignal: no event target per request): `aborted` once it has;
 * the transport sets the one callback that closes the request with `listen` (undefined when the exchange is over).
 */
export interface AbortHook {
  readonly aborted: boolean;
  listen(abort: (() => void) | undefined): void;
}

export interface SendOptions {
  method: string;
  /** The request's header block: `name: value\r\n` lines (see HttpTransport.headerBlock). */
  headers: string;
  body: string | undefined;
  abort: AbortHook;
}

/** The response of a request: its head, and its body as it arrives. */
export interface HttpResponse extends AsyncIterable<Buffer> {
  readonly statusCode: number;
  readonly statusMessage: string;
  /** Header values by lowercased name (a repeated header's values joined with ", "). */
  readonly headers: Readonly<Record<string, string>>;
  /** The whole body; fails with BodyTooLargeError (and closes the connection) past `limit` bytes. */
  readAll(limit: number): Promise<Buffer>;
  /** Stops reading: closes the connection unless the body was read to its end. */
  destroy(): void;
}

export class BodyTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`response larger than ${limit} bytes`);
    this.name = "BodyTooLargeError";
  }
}

/** Largest response head accepted (status line and headers). */
const MAX_HEAD_BYTES = 64 * 1024;
/** Received body bytes nobody has read yet above which the socket is paused (a slow stream consumer). */
const HIGH_WATER = 1024 * 1024;
const HEAD_END = Buffer.from("\r\n\r\n");
const CRLF = Buffer.from("\r\n");
const EMPTY = Buffer.alloc(0);
/** Characters a header name or value may not hold (they would end the header or the head). */
const UNSAFE_HEADER = /[\r\n\0]/;

function transportError(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * The body of one response as it is parsed off the connection: pieces queued for the reader, then the end or a
 * failure.
 */
class Body implements HttpResponse {
  statusCode = 0;
  statusMessage = "";
  headers: Record<string, string> = {};
  readonly #pieces: Buffer[] = [];
  #queued = 0;
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;

  constructor(
    private readonly onDestroy: () => void,
    private readonly pause: (paused: boolean) => void,
  ) {}

  push(piece: Buffer): void {
    if (piece.length === 0) return;
    this.#pieces.push(piece);
    this.#queued += piece.length;
    if (this.#queued > HIGH_WATER) this.pause(true);
    this.#notify();
  }

  end(): void {
    this.#ended = true;
    this.#notify();
  }

  fail(error: Error): void {
    if (this.#ended) return;
    this.#error ??= error;
    this.#notify();
  }

  get settled(): boolean {
    return this.#ended || this.#error !== undefined;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #take(): Buffer | undefined {
    const piece = this.#pieces.shift();
    if (piece !== undefined) {
      this.#queued -= piece.length;
      if (this.#queued <= HIGH_WATER / 2) this.pause(false);
    }
    return piece;
  }

  async readAll(limit: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let size = 0;
    for (;;) {
      for (let piece = this.#take(); piece !== undefined; piece = this.#take()) {
        size += piece.length;
        if (size > limit) {
          this.destroy();
          throw new BodyTooLargeError(limit);
        }
        parts.push(piece);
      }
      if (this.#error !== undefined) throw this.#error;
      if (this.#ended) return parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    let finished = false;
    try {
      for (;;) {
        const piece = this.#take();
        if (piece !== undefined) {
          yield piece;
          continue;
        }
        if (this.#error !== undefined) throw this.#error;
        if (this.#ended) {
          finished = true;
          return;
        }
        await new Promise<void>((resolve) => (this.#wake = resolve));
      }
    } finally {
      if (!finished) this.destroy();
    }
  }

  destroy(): void {
    if (this.#ended) return;
    this.fail(transportError("the response was abandoned", "ERR_ABORTED"));
    this.onDestroy();
  }
}

type Framing = { kind: "length"; left: number } | { kind: "chunked"; left: number; trailers: boolean } | { kind: "close" } | { kind: "none" };

/** One exchange on a connection: the request written, the response parsed as its bytes arrive. */
class Exchange {
  /** The response once its head is parsed. */
  body: Body | undefined;
  framing: Framing = { kind: "none" };
  keepAlive = false;
  /** The exchange is over (its connection free again or closed). */
  done = false;

  constructor(
    readonly method: string,
    readonly resolve: (response: HttpResponse) => void,
    readonly reject: (error: Error) => void,
    /** Runs once when the exchange is over (the caller's abort listener is removed). */
    readonly cleanup: () => void,
  ) {}

  /** Marks the exchange over; false when it already was. */
  close(): boolean {
    if (this.done) return false;
    this.done = true;
    this.cleanup();
    return true;
  }
}

/** A keep-alive connection: carries one exchange at a time. */
class Connection {
  #buffer: Buffer = EMPTY;
  #exchange: Exchange | undefined;
  #closed = false;

  constructor(
    readonly socket: Socket,
    private readonly release: (connection: Connection, reusable: boolean) => void,
  ) {
    socket.setNoDelay(true);
    socket.on("data", (data: Buffer) => this.#onData(data));
    socket.on("error", (error: Error) => this.#fail(error));
    socket.on("end", () => this.#onEnd());
    socket.on("close", () => this.#onEnd());
  }

  get closed(): boolean {
    return this.#closed;
  }

  start(exchange: Exchange, bytes: string): void {
    this.#exchange = exchange;
    this.socket.write(bytes);
  }

  destroy(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.socket.destroy();
  }

  #onData(data: Buffer): void {
    const exchange = this.#exchange;
    if (exchange === undefined) {
      // Nothing asked: an idle connection the server talks on cannot be trusted with the next request.
      this.destroy();
      this.release(this, false);
      return;
    }
    this.#buffer = this.#buffer.length === 0 ? data : Buffer.concat([this.#buffer, data]);
    try {
      this.#parse(exchange);
    } catch (error) {
      this.#fail(error as Error);
    }
  }

  #parse(exchange: Exchange): void {
    while (!exchange.done) {
      if (exchange.body === undefined) {
        if (!this.#parseHead(exchange)) return;
        continue;
      }
      const body = exchange.body;
      const framing = exchange.framing;
      const buffer = this.#buffer;
      if (framing.kind === "close") {
        this.#buffer = EMPTY;
        body.push(buffer);
        return;
      }
      if (framing.kind === "length") {
        const n = Math.min(framing.left, buffer.length);
        body.push(n === buffer.length ? buffer : buffer.subarray(0, n));
        framing.left -= n;
        this.#buffer = buffer.subarray(n);
        if (framing.left === 0) this.#finish(exchange);
        else return;
        continue;
      }
      if (framing.kind === "chunked") {
        if (framing.trailers) {
          // Trailer lines up to an empty line.
          const lineEnd = buffer.indexOf(CRLF);
          if (lineEnd < 0) return;
          this.#buffer = buffer.subarray(lineEnd + 2);
          if (lineEnd === 0) this.#finish(exchange);
          continue;
        }
        if (framing.left > 0) {
          const n = Math.min(framing.left, buffer.length);
          if (n === 0) return;
          body.push(buffer.subarray(0, n));
          framing.left -= n;
          this.#buffer = buffer.subarray(n);
          if (framing.left > 0) return;
          framing.left = -1; // the CRLF after the data
          continue;
        }
        if (framing.left === -1) {
          if (buffer.length < 2) return;
          if (buffer[0] !== 13 || buffer[1] !== 10) throw transportError("malformed chunked response (no CRLF after a chunk)", "HPE_INVALID_CHUNK_SIZE");
          this.#buffer = buffer.subarray(2);
          framing.left = 0;
          continue;
        }
        const lineEnd = buffer.indexOf(CRLF);
        if (lineEnd < 0) {
          if (buffer.length > 1024) throw transportError("malformed chunked response (chunk size line too long)", "HPE_INVALID_CHUNK_SIZE");
          return;
        }
        const sizeText = buffer.toString("latin1", 0, lineEnd).split(";", 1)[0]!.trim();
        if (!/^[0-9a-fA-F]{1,12}$/.test(sizeText)) throw transportError(`malformed chunked response (chunk size "${sizeText.slice(0, 20)}")`, "HPE_INVALID_CHUNK_SIZE");
        const size = parseInt(sizeText, 16);
        this.#buffer = buffer.subarray(lineEnd + 2);
        if (size === 0) framing.trailers = true;
        else framing.left = size;
        continue;
      }
      this.#finish(exchange); // no body
    }
  }

  /** Parses the response head if it is complete; 1xx heads are skipped. */
  #parseHead(exchange: Exchange): boolean {
    const buffer = this.#buffer;
    const headEnd = buffer.indexOf(HEAD_END);
    if (headEnd < 0) {
      if (buffer.length > MAX_HEAD_BYTES) throw transportError(`response head larger than ${MAX_HEAD_BYTES} bytes`, "HPE_HEADER_OVERFLOW");
      return false;
    }
    const lines = buffer.toString("latin1", 0, headEnd).split("\r\n");
    this.#buffer = buffer.subarray(headEnd + 4);
    const status = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0]!);
    if (status === null) throw transportError(`not an HTTP/1.x response: ${JSON.stringify(lines[0]!.slice(0, 40))}`, "HPE_INVALID_CONSTANT");
    const code = Number(status[2]);
    if (code >= 100 && code < 200) return true; // informational (100 Continue, 103 Early Hints): the real head follows
    const headers: Record<string, string> = {};
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const colon = line.indexOf(":");
      if (colon <= 0) throw transportError(`malformed response header line ${JSON.stringify(line.slice(0, 40))}`, "HPE_INVALID_HEADER_TOKEN");
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
    }
    const connection = (headers["connection"] ?? "").toLowerCase();
    exchange.keepAlive = status[1] === "1" ? !connection.includes("close") : connection.includes("keep-alive");
    const encoding = (headers["transfer-encoding"] ?? "").toLowerCase();
    const length = headers["content-length"];
    if (exchange.method === "HEAD" || code === 204 || code === 304) exchange.framing = { kind: "none" };
    else if (encoding !== "") {
      if (!encoding.endsWith("chunked")) throw transportError(`unsupported transfer-encoding "${encoding}"`, "HPE_INVALID_TRANSFER_ENCODING");
      exchange.framing = { kind: "chunked", left: 0, trailers: false };
    } else if (length !== undefined) {
      if (!/^\d{1,15}$/.test(length)) throw transportError(`malformed content-length "${length.slice(0, 20)}"`, "HPE_INVALID_CONTENT_LENGTH");
      exchange.framing = { kind: "length", left: Number(length) };
    } else {
      exchange.framing = { kind: "close" };
      exchange.keepAlive = false;
    }
    const body = new Body(
      () => {
        if (!exchange.done) this.#abandon(exchange);
      },
      (paused) => (paused ? this.socket.pause() : this.socket.resume()),
    );
    body.statusCode = code;
    body.statusMessage = status[3] ?? "";
    body.headers = headers;
    exchange.body = body;
    if (exchange.framing.kind === "length" && exchange.framing.left === 0) exchange.framing = { kind: "none" };
    exchange.resolve(body);
    return true;
  }

  #finish(exchange: Exchange): void {
    exchange.close();
    exchange.body!.end();
    this.#exchange = undefined;
    this.socket.resume();
    const reusable = exchange.keepAlive && this.#buffer.length === 0 && !this.#closed;
    this.#buffer = EMPTY;
    if (!reusable) this.destroy();
    this.release(this, reusable);
  }

  /** The caller gave up on the exchange (abort, or a body it will not read): the connection cannot be reused. */
  #abandon(exchange: Exchange): void {
    exchange.close();
    this.#exchange = undefined;
    this.destroy();
    this.release(this, false);
  }

  abort(exchange: Exchange, error: Error): void {
    if (exchange.done) return;
    if (exchange.body === undefined) exchange.reject(error);
    else exchange.body.fail(error);
    this.#abandon(exchange);
  }

  #onEnd(): void {
    const exchange = this.#exchange;
    if (exchange !== undefined && !exchange.done && exchange.body !== undefined && exchange.framing.kind === "close") {
      // The body was "everything until the connection closes".
      exchange.close();
      exchange.body.end();
      this.#exchange = undefined;
      this.destroy();
      this.release(this, false);
      return;
    }
    this.#fail(transportError(exchange?.body === undefined ? "socket hang up (the connection closed before the response)" : "the connection closed in the middle of the response body", "ECONNRESET"));
  }

  #fail(error: Error): void {
    const exchange = this.#exchange;
    this.#exchange = undefined;
    const wasClosed = this.#closed;
    this.destroy();
    if (exchange !== undefined && exchange.close()) {
      if (exchange.body === undefined) exchange.reject(error);
      else exchange.body.fail(error);
    }
    if (!wasClosed) this.release(this, false);
  }
}

/**
 * HTTP/1.1 with keep-alive to one server, on raw sockets (node:net, node:tls for https). It speaks what a model
 * endpoint needs: one request at a time per connection with a content-length body; responses framed by
 * content-length, chunked transfer-encoding or the connection's end (1xx heads skipped). Measured against the same
 * loopback endpoint it costs about a quarter of the CPU per call that node:http's client did (no ClientRequest and
 * IncomingMessage streams, no per-request agent bookkeeping), which matters when the gateway makes one model call per
 * question. An abort through the request's AbortHook closes the connection; a response read to its end returns it to the pool (last in, first
 * out). Idle pooled connections are closed after `idleMs` (below the usual server keep-alive of 5 s, so a request
 * rarely lands on a connection the server is closing) and never keep the process alive.
 */
export class HttpTransport {
  readonly #host: string;
  readonly #port: number;
  readonly #https: boolean;
  readonly #servername: string;
  readonly #prefix: string;
  readonly #hostHeader: string;
  readonly #idleMs: number;
  readonly #idle: Connection[] = [];
  readonly #all = new Set<Connection>();

  constructor(base: URL, options: { idleMs?: number } = {}) {
    this.#https = base.protocol === "https:";
    // A bracketed IPv6 literal connects without its brackets.
    this.#host = base.hostname.startsWith("[") ? base.hostname.slice(1, -1) : base.hostname;
    // SNI names a host, never an IP address (RFC 6066): an address connects without it.
    this.#servername = this.#host;
    this.#port = base.port === "" ? (this.#https ? 443 : 80) : Number(base.port);
    this.#prefix = base.pathname.replace(/\/+$/, "");
    this.#hostHeader = base.host;
    this.#idleMs = options.idleMs ?? 4_000;
  }

  /** The header lines for `headers` (validated once: a name or value with CR, LF or NUL is refused). */
  static headerBlock(headers: Record<string, string>): string {
    let block = "";
    for (const [name, value] of Object.entries(headers)) {
      if (UNSAFE_HEADER.test(name) || UNSAFE_HEADER.test(value) || name.includes(":") || name.trim() === "") {
        throw new RangeError(`invalid HTTP header ${JSON.stringify(name)} (a name or value holds a line break, NUL or colon)`);
      }
      block += `${name}: ${value}\r\n`;
    }
    return block;
  }

  /** Resolves with the response once its head has arrived; the body is left to the caller. */
  send(path: string, options: SendOptions): Promise<HttpResponse> {
    const hook = options.abort;
    if (hook.aborted) return Promise.reject(transportError("the request was aborted", "ABORT_ERR"));
    return new Promise<HttpResponse>((resolve, reject) => {
      const connection = this.#take();
      // The abort callback stays until the exchange is over: an abort mid-body closes the connection too.
      const exchange: Exchange = new Exchange(options.method, resolve, reject, () => hook.listen(undefined));
      hook.listen(() => connection.abort(exchange, transportError("the request was aborted", "ABORT_ERR")));
      const body = options.body;
      let bytes = `${options.method} ${this.#prefix}${path} HTTP/1.1\r\nhost: ${this.#hostHeader}\r\n${options.headers}`;
      bytes += body === undefined ? "\r\n" : `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
      connection.start(exchange, bytes);
    });
  }

  #take(): Connection {
    for (let c = this.#idle.pop(); c !== undefined; c = this.#idle.pop()) {
      if (c.closed) continue;
      c.socket.setTimeout(0);
      c.socket.ref();
      return c;
    }
    const socket = this.#https
      ? tlsConnect({ host: this.#host, port: this.#port, ...(isIP(this.#servername) === 0 ? { servername: this.#servername } : {}), ALPNProtocols: ["http/1.1"] })
      : netConnect({ host: this.#host, port: this.#port });
    const connection = new Connection(socket, (c, reusable) => this.#release(c, reusable));
    socket.on("timeout", () => {
      connection.destroy();
      this.#release(connection, false);
    });
    this.#all.add(connection);
    return connection;
  }

  #release(connection: Connection, reusable: boolean): void {
    const i = this.#idle.indexOf(connection);
    if (i >= 0) this.#idle.splice(i, 1);
    if (!reusable || connection.closed) {
      this.#all.delete(connection);
      return;
    }
    connection.socket.setTimeout(this.#idleMs);
    connection.socket.unref();
    this.#idle.push(connection);
  }

  /** Closes pooled connections. */
  close(): void {
    for (const c of this.#all) c.destroy();
    this.#all.clear();
    this.#idle.length = 0;
  }
}
