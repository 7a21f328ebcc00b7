export { createLogger, redactSecrets, SECRET_KEYS } from "./logger.js";
export type { Logger, LoggerOptions } from "./logger.js";
