import { defineConfig } from "vite";

declare const process: { env: Record<string, string | undefined> }; // Node's, without @types/node

// `npm run dev` serves the front end with hot reload and sends the API, the read-only
// JSON-RPC and /v1 to a running `promptex dashboard` (PROMPTEX_DASHBOARD_URL, default :8090).
const backend = process.env.PROMPTEX_DASHBOARD_URL ?? "http://127.0.0.1:8090";

export default defineConfig({
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", chunkSizeWarningLimit: 1024 },
  server: { proxy: { "/api": backend, "/rpc": backend, "/v1": backend } },
});
