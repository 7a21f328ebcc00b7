import { defineConfig } from "vitest/config";

/** Shared vitest settings: resolve workspace packages to their TypeScript sources. */
export function projectConfig(overrides: { testTimeout?: number; include?: string[] } = {}) {
  return defineConfig({
    resolve: { conditions: ["@ragtune/source"] },
    ssr: { resolve: { conditions: ["@ragtune/source"], externalConditions: ["@ragtune/source"] } },
    test: {
      include: overrides.include ?? ["src/**/*.test.ts", "test/**/*.test.ts"],
      testTimeout: overrides.testTimeout ?? 30_000,
      hookTimeout: 60_000,
      pool: "forks",
    },
  });
}
