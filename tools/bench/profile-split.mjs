// Summarises a V8 .cpuprofile (as cpu-profile.mjs writes for GATEWAY_CPU_PROF=dir): where the busy time of the last
// SECONDS went, by part of the system (the first frame up the stack that belongs to one) and by function (self time).
//   node tools/bench/profile-split.mjs <file.cpuprofile> [SECONDS=10] [SKIP_SECONDS_AT_END=0.5]
// The window ends SKIP seconds before the profile's end (the process's shutdown is not part of a measured round).
import { readFileSync } from "node:fs";

const [file, seconds = "10", skip = "0.5"] = process.argv.slice(2);
if (file === undefined) {
  console.error("usage: node tools/bench/profile-split.mjs <file.cpuprofile> [seconds] [skip-seconds-at-end]");
  process.exit(2);
}
const profile = JSON.parse(readFileSync(file, "utf8"));
/** Parts of the system, by a piece of the script URL of a frame (first match up the stack wins). */
const PARTS = [
  ["libs/retrieval", "search"],
  ["libs/llm", "LLM client"],
  ["libs/logger", "log line"],
  ["/pino", "log line"],
  ["sonic-boom", "log line"],
  ["libs/rpc", "libs/rpc"],
  ["@bufbuild/protobuf", "protobuf"],
  ["@connectrpc", "connect-es"],
  ["gateway/src/answer", "prompt and citations"],
  ["services/dataset/src", "prompt and citations"],
  ["services/eval/src", "prompt and citations"],
  ["services/gateway/src", "gateway"],
  ["_http_", "node HTTP"],
];
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parentOf = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parentOf.set(c, n.id);
const frame = (n) => `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").at(-1)}:${n.callFrame.lineNumber + 1}`;
const partOf = (id) => {
  for (let at = id; at !== undefined; at = parentOf.get(at)) {
    const url = byId.get(at).callFrame.url;
    for (const [piece, part] of PARTS) if (url.includes(piece)) return part;
  }
  return "other (node internals, V8, GC)";
};
const times = [];
let t = profile.startTime;
for (const d of profile.timeDeltas) times.push((t += d));
const end = times.at(-1) - Number(skip) * 1e6;
const start = end - Number(seconds) * 1e6;
const parts = new Map();
const self = new Map();
let busy = 0;
let all = 0;
profile.samples.forEach((id, i) => {
  if (times[i] < start || times[i] > end) return;
  all++;
  const node = byId.get(id);
  if (node.callFrame.functionName === "(idle)") return;
  busy++;
  const part = partOf(id);
  parts.set(part, (parts.get(part) ?? 0) + 1);
  const f = frame(node);
  self.set(f, (self.get(f) ?? 0) + 1);
});
const pct = (n) => `${((100 * n) / busy).toFixed(1).padStart(5)}%`;
console.log(`${busy} busy samples of ${all} in ${seconds} s (${((100 * busy) / Math.max(1, all)).toFixed(0)}% busy)\n\nby part:`);
for (const [part, n] of [...parts].sort((a, b) => b[1] - a[1])) console.log(`${pct(n)}  ${part}`);
console.log("\nby function (self time):");
for (const [f, n] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 30)) console.log(`${pct(n)}  ${f}`);
