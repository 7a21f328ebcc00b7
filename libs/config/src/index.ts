export { ConfigError, loadConfig, baseServiceSchema, envBoolean, envDuration, envInt, envList } from "./config.js";
export type { BaseServiceConfig } from "./config.js";
