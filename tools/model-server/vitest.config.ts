import { mergeConfig } from "vitest/config";
import { projectConfig } from "../../vitest.shared.js";

// The global setup trains a tiny adapter with the trainer worker once (CPU, under a minute).
export default mergeConfig(projectConfig(), { test: { globalSetup: ["test/global-setup.ts"], hookTimeout: 300_000 } });
