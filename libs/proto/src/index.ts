// Public surface of the generated contracts. Every message, enum and service name is unique
// across areas, so one flat export serves all consumers (contracts.test.ts checks it).
export * from "./gen/grpc/health/v1/health_pb.js";
export * from "./gen/ragtune/common/v1/common_pb.js";
export * from "./gen/ragtune/common/v1/resource_pb.js";
export * from "./gen/ragtune/dataset/v1/dataset_pb.js";
export * from "./gen/ragtune/eval/v1/eval_pb.js";
export * from "./gen/ragtune/events/v1/events_pb.js";
export * from "./gen/ragtune/events/v1/options_pb.js";
export * from "./gen/ragtune/gateway/v1/gateway_pb.js";
export * from "./gen/ragtune/ingest/v1/ingest_pb.js";
export * from "./gen/ragtune/trainer/v1/trainer_pb.js";
