import type { DescService } from "@bufbuild/protobuf";
import { createClient as createConnectClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";

export type RpcProtocol = "grpc" | "connect" | "grpc-web";

export interface RpcClientOptions {
  /** Server base URL, e.g. `RpcServer.url` ("http://127.0.0.1:50051"). */
  baseUrl: string;
  protocol: RpcProtocol;
  /** "2" (default; h2c for http:// URLs) or "1.1" (Connect and gRPC-Web only). */
  httpVersion?: "1.1" | "2";
  /** Default deadline for every call, in ms; a call may override it with `{ timeoutMs }`. */
  timeoutMs?: number;
  /** Sent as `authorization: Bearer <authToken>` on every call. */
  authToken?: string;
  /** Protobuf binary (default) or JSON on the wire (Connect and gRPC-Web). */
  useBinaryFormat?: boolean;
  /** Largest response message accepted, in bytes. */
  readMaxBytes?: number;
  interceptors?: Interceptor[];
}

function bearer(token: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/** The one place ragtune builds connect-node transports. */
export function createRpcTransport(options: RpcClientOptions): Transport {
  const httpVersion = options.httpVersion ?? "2";
  const interceptors = [
    ...(options.authToken !== undefined ? [bearer(options.authToken)] : []),
    ...(options.interceptors ?? []),
  ];
  const common = {
    baseUrl: options.baseUrl,
    interceptors,
    useBinaryFormat: options.useBinaryFormat ?? true,
    ...(options.timeoutMs !== undefined ? { defaultTimeoutMs: options.timeoutMs } : {}),
    ...(options.readMaxBytes !== undefined ? { readMaxBytes: options.readMaxBytes } : {}),
  };
  switch (options.protocol) {
    case "grpc":
      if (httpVersion !== "2") {
        throw new Error(`gRPC needs HTTP/2; httpVersion "${httpVersion}" works only with "connect" or "grpc-web"`);
      }
      return createGrpcTransport(common);
    case "connect":
      return createConnectTransport({ ...common, httpVersion });
    case "grpc-web":
      return createGrpcWebTransport({ ...common, httpVersion });
    default:
      throw new Error(`unknown RPC protocol "${String(options.protocol)}"; use "grpc", "connect" or "grpc-web"`);
  }
}

/** A typed client for `service`: `await createClient(Health, { baseUrl, protocol: "grpc" }).check({})`. */
export function createClient<T extends DescService>(service: T, options: RpcClientOptions): Client<T> {
  return createConnectClient(service, createRpcTransport(options));
}
