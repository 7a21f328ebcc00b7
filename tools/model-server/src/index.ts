export {
  DEFAULTS,
  startModelServer,
  type LoraModule,
  type ModelServer,
  type ModelServerHooks,
  type ModelServerOptions,
} from "./model-server.js";
export {
  flagsToEnv,
  loadModelServerConfig,
  modelServerConfigSchema,
  parseLoraModules,
  serverOptions,
  type ModelServerConfig,
} from "./config.js";
export { noEndOfSequenceBias, type ServedModel } from "./engine.js";
export { ModelServerError } from "./errors.js";
export { ModelServerMetrics } from "./metrics.js";
export { StepBatcher, type BatchedGeneration } from "./step-batcher.js";
