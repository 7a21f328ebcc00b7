import { projectConfig } from "../../vitest.shared.js";

// Integration tests train the tiny model with the real worker: minutes, not seconds.
export default projectConfig({ testTimeout: 240_000 });
