/**
 * A worker thread of the document pool (document-pool.ts): takes one document at a time, parses and chunks it
 * (prepareDocument) and posts the result. It first tells the pool it started on the document, after loading the
 * tokenizer, so the per-document time limit covers the document's own work only.
 */
import { parentPort } from "node:worker_threads";
import { TokenizerCache } from "./chunking-options.js";
import { claimTask, prepareDocument } from "./document-work.js";
import type { WorkerReply, WorkerTask } from "./document-pool.js";

const port = parentPort;
if (port === null) throw new Error("document-worker runs as a worker thread of the document pool");
const tokenizers = new TokenizerCache();

port.on("message", (task: WorkerTask) => {
  if (!claimTask(task)) return; // the pool took it back for a worker that was free
  const reply = (message: WorkerReply) => port.postMessage(message);
  try {
    tokenizers.get(task.work.chunking.tokenizer);
    reply({ id: task.id, type: "started" });
    reply({ id: task.id, type: "done", result: prepareDocument(task.work, tokenizers) });
  } catch (err) {
    const error = err instanceof Error ? err : new Error(String(err));
    reply({ id: task.id, type: "failed", name: error.name, message: error.message, stack: error.stack ?? "" });
  }
});
