/**
 * A stand-in for document-worker in the pool's tests, with documents that misbehave on purpose: `spin.md` never
 * ends (a runaway the time limit must stop), `exit.md` ends the thread, `throw.md` fails; others are rejected as
 * empty at once. It speaks the pool's protocol (started, then done or failed).
 */
import { parentPort } from "node:worker_threads";
import type { WorkerReply, WorkerTask } from "../src/document-pool.js";

const port = parentPort!;
port.on("message", (task: WorkerTask) => {
  const reply = (message: WorkerReply) => port.postMessage(message);
  reply({ id: task.id, type: "started" });
  switch (task.work.sourceName) {
    case "spin.md":
      for (;;) {
        // a tight loop: only terminating the thread stops it
      }
    case "exit.md":
      process.exit(3);
      break;
    case "throw.md":
      reply({ id: task.id, type: "failed", name: "RangeError", message: "Maximum call stack size exceeded", stack: "" });
      break;
    default:
      reply({ id: task.id, type: "done", result: { ok: false, code: "empty", message: `${task.work.sourceName}: served by thread ${process.pid}` } });
  }
});
