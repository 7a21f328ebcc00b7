import { projectConfig } from "../../vitest.shared.js";

// The corpus tests parse and chunk 82 documents per run; on a loaded 2-core machine that takes
// seconds, so give each test more room than the default (a bound, not a timing assertion).
export default projectConfig({ testTimeout: 120_000 });
