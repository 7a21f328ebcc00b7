/**
 * Worker threads that run from compiled JavaScript and from TypeScript sources alike: CPU-heavy work of a service
 * (parsing documents, building reports) leaves the event loop this way.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";

/** The module `name` next to the caller (`here` = its import.meta.url): `name.ts` from sources, `name.js` from dist. */
export function siblingEntry(here: string, name: string): URL {
  return new URL(here.endsWith(".ts") ? `./${name}.ts` : `./${name}.js`, here);
}

/**
 * Starts a worker thread on `entry`. Compiled JavaScript runs as it is; a TypeScript entry (dev, tests) is loaded
 * through tsx inside the worker, with the @ragtune/source condition so workspace libraries resolve to their sources.
 */
export function startWorkerThread(entry: URL): Worker {
  if (!entry.pathname.endsWith(".ts")) return new Worker(entry);
  const bootstrap = `import(${JSON.stringify(tsxEsmApi())}).then((m) => { (m.register ?? m.default.register)(); return import(${JSON.stringify(entry.href)}); })`;
  return new Worker(bootstrap, { eval: true, execArgv: ["--conditions=@ragtune/source"] });
}

/** URL of tsx's ESM API module (its package exports name it; its CommonJS build cannot register hooks in a worker). */
function tsxEsmApi(): string {
  const manifest = createRequire(fileURLToPath(import.meta.url)).resolve("tsx/package.json");
  const exports = (JSON.parse(readFileSync(manifest, "utf8")) as { exports: Record<string, { import: { default: string } }> }).exports;
  return pathToFileURL(join(dirname(manifest), exports["./esm/api"]!.import.default)).href;
}
