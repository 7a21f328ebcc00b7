// Preload for a benchmark's child process (NODE_OPTIONS="--import /abs/path/cpu-profile.mjs", which cannot take
// --cpu-prof): when CPU_PROFILE_DIR is set and the process's main script path contains CPU_PROFILE_MATCH (all when
// unset), profiles the process from start to exit and writes <dir>/<pid>.cpuprofile (open it in Chrome DevTools).
import { Session } from "node:inspector";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.env.CPU_PROFILE_DIR;
const match = process.env.CPU_PROFILE_MATCH ?? "";
if (dir && (process.argv[1] ?? "").includes(match)) {
  const session = new Session();
  session.connect();
  session.post("Profiler.enable");
  session.post("Profiler.setSamplingInterval", { interval: 500 });
  session.post("Profiler.start");
  process.on("exit", () => {
    // A session in the process's own thread answers synchronously, so this runs to the end inside the exit handler.
    session.post("Profiler.stop", (err, result) => {
      if (err) return;
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, `${process.pid}.cpuprofile`), JSON.stringify(result.profile));
    });
  });
}
