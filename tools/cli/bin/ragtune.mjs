#!/usr/bin/env node
// The `ragtune` command: runs src/main.ts from the workspace sources (TypeScript through tsx) and exits with its code.
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const main = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "main.ts");
const result = spawnSync(process.execPath, ["--conditions=@ragtune/source", "--import", "tsx", main, ...process.argv.slice(2)], { stdio: "inherit" });
process.exit(result.status ?? 1);
