#!/usr/bin/env node
// The `ragtune-model-server` command: runs src/main.ts from source (tsx), as the repo's other tools run.
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const main = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "main.ts");
// tsx resolved from here, so the command works from any working directory.
const tsx = import.meta.resolve("tsx");
const child = spawn(process.execPath, ["--conditions=@ragtune/source", "--import", tsx, main, ...process.argv.slice(2)], { stdio: "inherit" });
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => child.kill(signal));
child.on("exit", (code, signal) => (process.exitCode = code ?? (signal ? 1 : 0)));
