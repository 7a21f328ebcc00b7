import type * as http from "node:http";
import type * as http2 from "node:http2";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type ContextValues, type HandlerContext, type MethodImplSpec } from "@connectrpc/connect";
import {
  compressionNegotiate,
  createMethodSerializationLookup,
  invokeUnaryImplementation,
  mergeNonProtocolHeaders,
  type UniversalHandlerOptions,
} from "@connectrpc/connect/protocol";
import {
  codeToHttpStatus,
  contentTypeUnaryJson,
  contentTypeUnaryProto,
  contentTypeUnaryRegExp,
  errorToJsonBytes,
  parseTimeout,
  trailerMux,
} from "@connectrpc/connect/protocol-connect";

/*
 * Connect's unary protocol (a POST of one JSON or binary message, answered by one message or a JSON error), served
 * straight from node's request and response. connect-es serves it through its universal handler: the request body
 * read through an async iterator, a handler context with three copied Headers and an AbortController linked to three
 * signals (aborted at the end of every call without a reason, so Node builds a DOMException with a stack trace per
 * call), the response written from an async iterable. That is about a fifth of the gateway's CPU per Ask. This
 * path does the same steps with connect-es's own pieces (content-type, timeout and compression negotiation,
 * serialization with the router's limits, the interceptor chain, error JSON, status mapping, trailer muxing), so
 * a call answers byte for byte as connect-es would (test/server.test.ts compares the two). Everything else — GET
 * requests, gRPC, gRPC-Web, streams, a content type connect-es would refuse — goes to connect-es's handler.
 */

type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

/** What the server makes of every incoming call (unary or not) before a handler takes it (server.ts callOf). */
export interface IncomingCall {
  header: Headers;
  values: ContextValues;
  controller: AbortController;
  /** The URL of the call, as connect's handler context has it. */
  url: string;
}

export interface ConnectUnaryHandler {
  readonly method: DescMethod;
  /** Whether this request is one for this path (a POST of a unary Connect content type); else connect's handler. */
  accepts(req: NodeRequest): boolean;
  /** Serves the call; resolves when the response is handed to node, rejects only when it could not be written. */
  serve(req: NodeRequest, res: NodeResponse, call: IncomingCall): Promise<void>;
}

/** How every call that completed normally ends its signal (connect aborts it then, without a reason). */
const CALL_COMPLETE = new ConnectError("the call completed", Code.Canceled);

/**
 * The unary handlers of a service implementation, keyed by request path, from the router's own options (as
 * `validateUniversalHandlerOptions` normalised them). Methods the implementation lacks are left out (connect's
 * handler answers Unimplemented for them).
 */
export function connectUnaryHandlers(
  service: DescService,
  methods: Record<string, MethodImplSpec>,
  opt: UniversalHandlerOptions,
): Map<string, ConnectUnaryHandler> {
  const out = new Map<string, ConnectUnaryHandler>();
  for (const spec of Object.values(methods)) {
    if (spec.kind !== "unary") continue;
    out.set(`/${service.typeName}/${spec.method.name}`, unaryHandler(spec, opt));
  }
  return out;
}

function unaryHandler(spec: Extract<MethodImplSpec, { kind: "unary" }>, opt: UniversalHandlerOptions): ConnectUnaryHandler {
  const method = spec.method;
  const serialization = createMethodSerializationLookup(method, opt.binaryOptions, opt.jsonOptions, opt);
  return {
    method,
    accepts(req) {
      if (req.method !== "POST" || opt.requireConnectProtocolHeader) return false;
      const type = req.headers["content-type"];
      return type !== undefined && contentTypeUnaryRegExp.test(type);
    },
    async serve(req, res, call) {
      const binary = !/^application\/json/i.test(call.header.get("content-type") ?? "");
      const timeout = parseTimeout(call.header.get("connect-timeout-ms"), opt.maxTimeoutMs);
      const { controller } = call;
      let deadline: NodeJS.Timeout | undefined;
      let deadlineAt: number | undefined;
      if (timeout.timeoutMs !== undefined) {
        deadlineAt = Date.now() + timeout.timeoutMs;
        deadline = setTimeout(abortTimedOut, timeout.timeoutMs, controller);
      }
      const onShutdown = () => {
        if (!controller.signal.aborted) controller.abort(opt.shutdownSignal?.reason);
      };
      opt.shutdownSignal?.addEventListener("abort", onShutdown, { once: true });
      const context: HandlerContext = {
        method,
        service: method.parent,
        requestMethod: "POST",
        protocolName: "connect",
        url: call.url,
        signal: controller.signal,
        timeoutMs: () => (deadlineAt === undefined ? undefined : deadlineAt - Date.now()),
        requestHeader: call.header,
        responseHeader: new Headers({ "content-type": binary ? contentTypeUnaryProto : contentTypeUnaryJson }),
        responseTrailer: new Headers(),
        values: call.values,
      };
      const compression = compressionNegotiate(opt.acceptCompression, call.header.get("content-encoding"), call.header.get("accept-encoding"), "accept-encoding");
      let status = 200;
      let body: Uint8Array;
      try {
        // As connect: the request gate runs before the body is read, so a request it rejects is never read.
        if (opt.requestGate !== undefined) await opt.requestGate(context);
        if (compression.error) throw compression.error;
        if (timeout.error) throw timeout.error;
        let bytes = await readBody(req, opt.readMaxBytes, call.header.get("content-length"));
        if (compression.request) bytes = await compression.request.decompress(bytes, opt.readMaxBytes);
        let input;
        try {
          input = serialization.getI(binary).parse(bytes);
        } catch (e) {
          throw invalidBody(method, e);
        }
        const output = await invokeUnaryImplementation(spec, context, input, opt.interceptors);
        body = serialization.getO(binary).serialize(output);
      } catch (e) {
        if (!controller.signal.aborted) controller.abort(e);
        const error = e instanceof ConnectError ? e : new ConnectError("internal error", Code.Internal, undefined, undefined, e);
        status = codeToHttpStatus(error.code);
        context.responseHeader.set("content-type", contentTypeUnaryJson);
        if (!error.isWireError) mergeNonProtocolHeaders(context.responseHeader, error.metadata);
        body = errorToJsonBytes(error, opt.jsonOptions);
      } finally {
        clearTimeout(deadline);
        opt.shutdownSignal?.removeEventListener("abort", onShutdown);
      }
      // A failed call's signal is aborted with its error above; a completed one's ends here.
      if (!controller.signal.aborted) controller.abort(CALL_COMPLETE);
      if (compression.response && body.byteLength >= opt.compressMinBytes) {
        body = await compression.response.compress(body);
        context.responseHeader.set("content-encoding", compression.response.name);
      }
      const header = trailerMux(context.responseHeader, context.responseTrailer);
      header.set("content-length", String(body.byteLength));
      const nodeHeader: Record<string, string> = {};
      header.forEach((value, key) => {
        nodeHeader[key] = value;
      });
      if (res.destroyed) return;
      res.writeHead(status, nodeHeader);
      res.end(body);
    },
  };
}

function abortTimedOut(controller: AbortController): void {
  if (!controller.signal.aborted) controller.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
}

/** How connect-es's binary parse errors begin (it reports them as internal). */
export const PARSE_BINARY = "parse binary:";

/** What the client is told when its body is not valid protobuf (`raw`: connect-es's parse error). */
export function unparsableBodyMessage(method: DescMethod, raw: string): string {
  return `the request body is not a valid ${method.input.typeName} message (${raw})`;
}

/**
 * A request body that does not parse as the method's input: invalid_argument (connect-es reports invalid protobuf as
 * internal, but it is the client's fault), naming the expected message.
 */
function invalidBody(method: DescMethod, e: unknown): ConnectError {
  const err = ConnectError.from(e, Code.InvalidArgument);
  if (err.code !== Code.Internal || !err.rawMessage.startsWith(PARSE_BINARY)) return err;
  return new ConnectError(unparsableBodyMessage(method, err.rawMessage), Code.InvalidArgument);
}

/**
 * The whole request body, with connect's limits and messages: a declared length over `readMaxBytes` is refused
 * before a byte is read, a body that ends short of or runs past its declared length is invalid_argument.
 */
function readBody(req: NodeRequest, readMaxBytes: number, lengthHeader: string | null): Promise<Uint8Array> {
  const hint = lengthHeader === null ? NaN : Number(lengthHeader);
  const known = Number.isSafeInteger(hint) && hint >= 0;
  if (known && hint > readMaxBytes) {
    return Promise.reject(new ConnectError(`message size ${hint} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted));
  }
  return new Promise<Uint8Array>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let count = 0;
    let settled = false;
    const finish = (err: ConnectError | undefined) => {
      if (settled) return;
      settled = true;
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
      if (err !== undefined) {
        req.resume(); // drain what is left, so the connection stays usable for the error response
        reject(err);
        return;
      }
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, count));
    };
    const onData = (chunk: Buffer) => {
      count += chunk.byteLength;
      if (known && count > hint) {
        finish(new ConnectError(`protocol error: promised ${hint} bytes, received ${count}`, Code.InvalidArgument));
      } else if (!known && count > readMaxBytes) {
        finish(new ConnectError(`message size is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted));
      } else {
        chunks.push(chunk);
      }
    };
    const onEnd = () => {
      if (known && count < hint) finish(new ConnectError(`protocol error: promised ${hint} bytes, received ${count}`, Code.InvalidArgument));
      else finish(undefined);
    };
    const onError = (err: Error) => finish(new ConnectError(`the request body could not be read: ${err.message}`, Code.Aborted, undefined, undefined, err));
    const onClose = () => finish(new ConnectError("the client closed the connection before the request body was read", Code.Canceled));
    req.on("data", onData);
    req.once("end", onEnd);
    req.once("error", onError);
    req.once("close", onClose);
  });
}
