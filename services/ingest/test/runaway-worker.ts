/**
 * A stand-in for document-worker in the pool's tests, with documents that misbehave on purpose: `spin.md` never
 * ends (a runaway the time limit must stop), `exit.md` ends the thread, `throw.md` fails, `wait.md` finishes only
 * once the next document has been posted to this thread (so it shows that the pool hands a worker its next document
 * before the current one is done); others are rejected as empty at once. It speaks the pool's protocol (started,
 * then done or failed).
 */
import { parentPort } from "node:worker_threads";
import type { WorkerReply, WorkerTask } from "../src/document-pool.js";
import { claimTask } from "../src/document-work.js";

const port = parentPort!;
const reply = (message: WorkerReply) => port.postMessage(message);
/** A `wait.md` started and not finished: it finishes when the next document arrives. */
let waiting: WorkerTask | undefined;
port.on("message", (task: WorkerTask) => {
  if (waiting !== undefined) {
    reply({ id: waiting.id, type: "done", result: { ok: false, code: "empty", message: `${waiting.work.sourceName}: finished after ${task.work.sourceName} arrived` } });
    waiting = undefined;
  }
  if (!claimTask(task)) return;
  reply({ id: task.id, type: "started" });
  switch (task.work.sourceName) {
    case "spin.md":
      for (;;) {
        // a tight loop: only terminating the thread stops it
      }
    case "exit.md":
      process.exit(3);
      break;
    case "wait.md":
      waiting = task;
      break;
    case "throw.md":
      reply({ id: task.id, type: "failed", name: "RangeError", message: "Maximum call stack size exceeded", stack: "" });
      break;
    default:
      reply({ id: task.id, type: "done", result: { ok: false, code: "empty", message: `${task.work.sourceName}: served by thread ${process.pid}` } });
  }
});
