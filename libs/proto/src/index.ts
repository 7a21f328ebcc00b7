// Public surface of the generated contracts. Every message, enum and service name is unique
// across areas, so one flat export serves all consumers.
export * from "./gen/grpc/health/v1/health_pb.js";
export * from "./gen/ragtune/common/v1/common_pb.js";
export * from "./gen/ragtune/events/v1/events_pb.js";
export * from "./gen/ragtune/ingest/v1/ingest_pb.js";
export * from "./gen/ragtune/trainer/v1/trainer_pb.js";
