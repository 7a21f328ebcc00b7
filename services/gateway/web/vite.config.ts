import { defineConfig, defaultClientConditions } from "vite";

// The dashboard is served by the gateway from dist/ (services/gateway/src/dashboard-files.ts). Workspace packages
// resolve to their TypeScript sources, as everywhere else in the repo.
export default defineConfig({
  base: "/",
  resolve: { conditions: ["@ragtune/source", ...defaultClientConditions] },
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", chunkSizeWarningLimit: 1500, sourcemap: false },
  server: {
    // `npm run dev -w @ragtune/dashboard` with GATEWAY_URL: RPCs go to that gateway.
    proxy: process.env.GATEWAY_URL ? { "/ragtune.gateway.v1.GatewayService": process.env.GATEWAY_URL } : {},
  },
});
