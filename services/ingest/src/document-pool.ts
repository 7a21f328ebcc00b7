import { availableParallelism } from "node:os";
import type { Worker } from "node:worker_threads";
import type { Logger } from "@ragtune/logger";
import { siblingEntry, startWorkerThread } from "@ragtune/rpc";
import type { DocumentWork, DocumentWorkResult } from "./document-work.js";

/** A message to a worker: one document. */
export interface WorkerTask {
  id: number;
  work: DocumentWork;
}

/** A worker's messages about a task: it started on it (the time limit starts), its result, or its error. */
export type WorkerReply =
  | { id: number; type: "started" }
  | { id: number; type: "done"; result: DocumentWorkResult }
  | { id: number; type: "failed"; name: string; message: string; stack: string };

/** A document ran past the time limit; its worker was stopped and replaced. */
export class DocumentTimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`parsing and chunking took longer than ${timeoutMs} ms (INGEST_DOCUMENT_TIMEOUT) and were stopped`);
    this.name = "DocumentTimeoutError";
  }
}

/** The worker died on a document (out of memory, a crash) or threw; the worker is replaced. */
export class DocumentWorkerError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "DocumentWorkerError";
  }
}

export interface DocumentPoolOptions {
  /** Worker threads (default: the cores this process may use). */
  size?: number;
  /** Longest a document may take once its worker started on it; then the worker is terminated and replaced. */
  timeoutMs: number;
  logger: Logger;
  /** The worker's module (default document-worker); tests pass their own to force a runaway or a crash. */
  entry?: URL;
}

interface Task {
  id: number;
  work: DocumentWork;
  resolve: (result: DocumentWorkResult) => void;
  reject: (err: Error) => void;
}

interface PoolWorker {
  thread: Worker;
  task: Task | undefined;
  timer: NodeJS.Timeout | undefined;
}

/**
 * Worker threads that parse and chunk documents off the event loop, so RPCs and health answer while documents are
 * processed and every core works. Documents queue for a free worker; a document that runs past `timeoutMs` ends
 * with DocumentTimeoutError and its worker is terminated (which stops even a tight loop) and replaced; a worker that
 * dies fails only its own document.
 */
export class DocumentPool {
  readonly size: number;
  private readonly entry: URL;
  private readonly workers = new Set<PoolWorker>();
  private readonly queue: Task[] = [];
  private nextId = 1;
  private closed = false;

  constructor(private readonly options: DocumentPoolOptions) {
    this.size = Math.max(1, options.size ?? availableParallelism());
    this.entry = options.entry ?? defaultEntry();
  }

  /** Parses and chunks one document in a worker. Rejects with DocumentTimeoutError or DocumentWorkerError. */
  run(work: DocumentWork): Promise<DocumentWorkResult> {
    if (this.closed) return Promise.reject(new Error("the document pool is closed"));
    return new Promise((resolve, reject) => {
      this.queue.push({ id: this.nextId++, work, resolve, reject });
      this.dispatch();
    });
  }

  /** Stops every worker; queued and running documents are rejected. */
  async close(): Promise<void> {
    this.closed = true;
    for (const task of this.queue.splice(0)) task.reject(new Error("the document pool closed"));
    await Promise.all(
      [...this.workers].map(async (w) => {
        this.workers.delete(w);
        clearTimeout(w.timer);
        w.task?.reject(new Error("the document pool closed"));
        w.task = undefined;
        await w.thread.terminate();
      }),
    );
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      let worker = [...this.workers].find((w) => w.task === undefined);
      if (worker === undefined) {
        if (this.workers.size >= this.size) return;
        worker = this.spawn();
      }
      const task = this.queue.shift()!;
      worker.task = task;
      worker.thread.postMessage({ id: task.id, work: task.work } satisfies WorkerTask);
    }
  }

  private spawn(): PoolWorker {
    const worker: PoolWorker = { thread: startWorkerThread(this.entry), task: undefined, timer: undefined };
    this.workers.add(worker);
    worker.thread.unref();
    worker.thread.on("message", (reply: WorkerReply) => this.onReply(worker, reply));
    worker.thread.on("error", (err) => this.retire(worker, new DocumentWorkerError(`the document worker failed: ${err.message}`, { cause: err })));
    worker.thread.on("exit", (code) => this.retire(worker, new DocumentWorkerError(`the document worker exited with code ${code}`)));
    return worker;
  }

  private onReply(worker: PoolWorker, reply: WorkerReply): void {
    const task = worker.task;
    if (task === undefined || task.id !== reply.id) return;
    if (reply.type === "started") {
      worker.timer = setTimeout(() => this.timeOut(worker, task), this.options.timeoutMs);
      return;
    }
    clearTimeout(worker.timer);
    worker.timer = undefined;
    worker.task = undefined;
    if (reply.type === "done") task.resolve(reply.result);
    else {
      const err = new DocumentWorkerError(`${reply.name}: ${reply.message}`);
      err.stack = reply.stack;
      task.reject(err);
    }
    this.dispatch();
  }

  private timeOut(worker: PoolWorker, task: Task): void {
    if (worker.task !== task) return;
    this.options.logger.warn({ sourceName: task.work.sourceName, timeoutMs: this.options.timeoutMs }, "document ran past the time limit; replacing its worker");
    worker.task = undefined;
    this.workers.delete(worker);
    task.reject(new DocumentTimeoutError(this.options.timeoutMs));
    void worker.thread.terminate();
    this.dispatch();
  }

  /** A worker that errored or exited: its document fails, a new worker takes the queue. */
  private retire(worker: PoolWorker, err: Error): void {
    if (!this.workers.delete(worker)) return;
    clearTimeout(worker.timer);
    const task = worker.task;
    worker.task = undefined;
    if (task !== undefined) {
      this.options.logger.error({ err, sourceName: task.work.sourceName }, "document worker died; replacing it");
      task.reject(err);
    }
    if (!this.closed) this.dispatch();
  }
}

function defaultEntry(): URL {
  return siblingEntry(import.meta.url, "document-worker");
}
