import { create, fromBinary, toBinary, type DescMethodUnary, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";

/**
 * One unary call through @grpc/grpc-js — a gRPC client that is not connect-es — to prove a server speaks plain gRPC
 * over h2c. `address` is `host:port` or a base URL; `method` is a generated method descriptor, e.g.
 * `Health.method.check` or `TrainerService.method.getJob`. gRPC failures reject with grpc-js's ServiceError (`.code`).
 */
export function grpcJsUnary<M extends DescMethodUnary>(
  address: string,
  method: M,
  request: MessageInitShape<M["input"]>,
): Promise<MessageShape<M["output"]>> {
  const target = address.includes("://") ? new URL(address).host : address;
  const client = new grpc.Client(target, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest<MessageShape<M["input"]>, MessageShape<M["output"]>>(
      `/${method.parent.typeName}/${method.name}`,
      (msg) => Buffer.from(toBinary(method.input, msg)),
      (bytes) => fromBinary(method.output, bytes) as MessageShape<M["output"]>,
      create(method.input, request) as MessageShape<M["input"]>,
      (err: grpc.ServiceError | null, value?: MessageShape<M["output"]>) => {
        client.close();
        if (err) reject(err);
        else if (value === undefined) reject(new Error("no response"));
        else resolve(value);
      },
    );
  });
}
