export { ConfigError, loadConfig, baseServiceSchema, envBoolean, envBytes, envDuration, envInt, envList } from "./config.js";
export type { BaseServiceConfig } from "./config.js";
