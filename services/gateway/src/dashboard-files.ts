/**
 * Serves the dashboard's built files (services/gateway/web/dist, made by `npm run build -w @ragtune/dashboard`) on the
 * gateway's HTTP port beside the RPCs: GET/HEAD only, paths resolved inside the folder, hashed assets cached for good,
 * any other path without a file extension answered with index.html (the dashboard routes in the page).
 */
import { readFile, stat } from "node:fs/promises";
import type * as http from "node:http";
import type * as http2 from "node:http2";
import { extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";
import type { Logger } from "@ragtune/logger";

type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

/** Where the build writes the dashboard, seen from src/ (sources) and dist/ (compiled) alike. */
export const DASHBOARD_DIST = fileURLToPath(new URL("../web/dist", import.meta.url));

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json",
  ".map": "application/json",
  ".woff2": "font/woff2",
  ".txt": "text/plain; charset=utf-8",
};

const HEADERS = {
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  // The page talks only to this origin (the gateway's RPCs); uPlot sets element styles from script.
  "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
};

/**
 * A handler for the RPC server's non-RPC requests: true when it answered (a dashboard file, index.html, or a 404/405/503
 * under the dashboard), false for requests it leaves to the server (nothing here claims /metrics or RPC paths).
 */
export function dashboardFiles(options: { root?: string; logger: Logger }): (req: NodeRequest, res: NodeResponse) => boolean {
  const root = normalize(options.root ?? DASHBOARD_DIST);
  return (req, res) => {
    const method = req.method ?? "GET";
    const rawPath = (req.url ?? "/").split("?", 1)[0] ?? "/";
    // RPC paths are POSTs to /<package.Service>/<Method>; leave anything that is not a page fetch to the server.
    if (method !== "GET" && method !== "HEAD") return false;
    let path: string;
    try {
      path = decodeURIComponent(rawPath);
    } catch {
      send(res, 400, "text/plain; charset=utf-8", "bad path\n", method);
      return true;
    }
    if (path.includes("\0")) {
      send(res, 400, "text/plain; charset=utf-8", "bad path\n", method);
      return true;
    }
    const relative = normalize(path).replace(/^([/\\])+/, "");
    const file = join(root, relative === "" ? "index.html" : relative);
    if (file !== root && !file.startsWith(root + sep)) {
      send(res, 404, "text/plain; charset=utf-8", "not found\n", method);
      return true;
    }
    void serve(file, extname(relative) === "" ? join(root, "index.html") : undefined, res, method).catch((err: unknown) => {
      options.logger.error({ err, path }, "cannot serve a dashboard file");
      if (!res.headersSent) send(res, 500, "text/plain; charset=utf-8", "internal error\n", method);
      else res.destroy();
    });
    return true;
  };
}

async function serve(file: string, fallback: string | undefined, res: NodeResponse, method: string): Promise<void> {
  let target = file;
  if (!(await isFile(target))) {
    if (fallback === undefined) return send(res, 404, "text/plain; charset=utf-8", "not found\n", method);
    target = fallback;
    if (!(await isFile(target))) {
      return send(res, 503, "text/plain; charset=utf-8", "the dashboard is not built: run `npm run build -w @ragtune/dashboard` (or `npm run build`)\n", method);
    }
  }
  const body = await readFile(target);
  const type = TYPES[extname(target)] ?? "application/octet-stream";
  // Vite names assets by content hash: they never change under a name; index.html always revalidates.
  const cache = target.includes(`${sep}assets${sep}`) ? "public, max-age=31536000, immutable" : "no-cache";
  send(res, 200, type, body, method, cache);
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

function send(res: NodeResponse, status: number, type: string, body: string | Buffer, method: string, cache = "no-store"): void {
  const bytes = typeof body === "string" ? Buffer.from(body) : body;
  res.writeHead(status, { ...HEADERS, "content-type": type, "content-length": String(bytes.length), "cache-control": cache });
  if (method === "HEAD") res.end();
  else res.end(bytes);
}
