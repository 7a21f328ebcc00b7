#!/usr/bin/env node
// The workspace packages a package needs in production: itself and, transitively, every workspace package its
// "dependencies" name (devDependencies are not followed). Prints "<name> <folder>" per line, the package first.
//
//   node tools/scripts/production-workspaces.mjs @ragtune/gateway-service
//
// The images (deploy/docker/*.Dockerfile) copy the compiled dist/ of exactly these folders and drop every other
// workspace link npm made: `npm ci --omit=dev --workspace X` leaves out test-only npm packages, but it links every
// workspace reachable from X through devDependencies too (@ragtune/testing), as npm never marks a workspace dev.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

function readJson(file) {
  return JSON.parse(readFileSync(file, "utf8"));
}

/** Folders of the root package.json's workspaces (patterns "dir" and "dir/*"). */
function workspaceFolders(root) {
  const folders = [];
  for (const pattern of readJson(join(root, "package.json")).workspaces ?? []) {
    if (pattern.endsWith("/*")) {
      const parent = pattern.slice(0, -2);
      if (!existsSync(join(root, parent))) continue;
      for (const entry of readdirSync(join(root, parent), { withFileTypes: true })) {
        if (entry.isDirectory() && existsSync(join(root, parent, entry.name, "package.json"))) folders.push(`${parent}/${entry.name}`);
      }
    } else if (existsSync(join(root, pattern, "package.json"))) {
      folders.push(pattern);
    }
  }
  return folders;
}

/** [name, folder] of `name` and the workspace packages it needs in production, `name` first. */
export function productionWorkspaces(root, name) {
  const byName = new Map(workspaceFolders(root).map((folder) => [readJson(join(root, folder, "package.json")).name, folder]));
  if (!byName.has(name)) throw new Error(`${name} is not a workspace package of ${root}`);
  const seen = new Map();
  const queue = [name];
  while (queue.length > 0) {
    const next = queue.shift();
    if (seen.has(next) || !byName.has(next)) continue;
    seen.set(next, byName.get(next));
    queue.push(...Object.keys(readJson(join(root, byName.get(next), "package.json")).dependencies ?? {}));
  }
  return [...seen];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const name = process.argv[2];
  if (!name) {
    process.stderr.write("usage: production-workspaces.mjs <workspace package name>\n");
    process.exit(2);
  }
  for (const [pkg, folder] of productionWorkspaces(process.cwd(), name)) process.stdout.write(`${pkg} ${folder}\n`);
}
