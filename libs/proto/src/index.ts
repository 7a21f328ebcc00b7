// Public surface of the generated contracts. Every message, enum and service name is unique
// across areas, so one flat export serves all consumers.
export * from "./gen/grpc/health/v1/health_pb.js";
