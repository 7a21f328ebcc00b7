/**
 * CPU time of another process, read from Linux's /proc (user + system, in clock ticks of USER_HZ = 100): the benches
 * report the CPU a contestant spent beside wall time, which on a shared machine is the steadier figure.
 */
import { readdirSync, readFileSync } from "node:fs";

const TICKS_PER_SECOND = 100;

/** utime + stime of one /proc stat line, in seconds (fields 14 and 15, after the parenthesised command name). */
function statSeconds(stat: string): number {
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / TICKS_PER_SECOND;
}

/** CPU seconds a process has used so far, all threads together. */
export function processCpuSeconds(pid: number): number {
  return statSeconds(readFileSync(`/proc/${pid}/stat`, "utf8"));
}

/** CPU seconds a process has used so far: its main thread, and its other threads (workers, GC, I/O) together. */
export function threadCpuSeconds(pid: number): { main: number; other: number } {
  let main = 0;
  let other = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    } catch {
      continue; // a thread that ended meanwhile
    }
    if (tid === String(pid)) main += statSeconds(stat);
    else other += statSeconds(stat);
  }
  return { main, other };
}

/** CPU seconds of a process and its live descendants (a gateway's cluster workers). */
export function processTreeCpuSeconds(pid: number): number {
  let total = 0;
  try {
    total = processCpuSeconds(pid);
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const children = readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").trim();
      for (const child of children === "" ? [] : children.split(" ")) total += processTreeCpuSeconds(Number(child));
    }
  } catch {
    // a process that ended meanwhile
  }
  return total;
}
