import { availableParallelism } from "node:os";
import type { Worker } from "node:worker_threads";
import type { Logger } from "@ragtune/logger";
import { siblingEntry, startWorkerThread } from "@ragtune/rpc";
import { CLAIM, type DocumentWork, type DocumentWorkResult } from "./document-work.js";

/**
 * A message to a worker: one document, and its claim (4 bytes shared with the pool): the worker takes the document
 * only if it claims it first (`claimTask` of document-work), and the pool takes back a document a worker holds but
 * has not claimed, for a worker that is free (the first may be stuck on a runaway document).
 */
export interface WorkerTask {
  id: number;
  work: DocumentWork;
  claim: SharedArrayBuffer;
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
  claim: SharedArrayBuffer;
  resolve: (result: DocumentWorkResult) => void;
  reject: (err: Error) => void;
}

interface PoolWorker {
  thread: Worker;
  /**
   * The documents posted to this worker, in the order it takes them: the first is the one it works on (or starts
   * next), the others wait in its message queue, so it starts the next one the moment it finishes one, without a
   * round trip through the main thread's event loop (which is busy with the writes of the documents in flight).
   */
  tasks: Task[];
  timer: NodeJS.Timeout | undefined;
}

/**
 * Documents posted to a worker at once: the one it works on and the next, so it never waits for the main thread to
 * hand it work. More would only make a document wait behind others of the same worker while another is free.
 */
const WORKER_DEPTH = 2;

/**
 * Worker threads that parse and chunk documents off the event loop, so RPCs and health answer while documents are
 * processed and every core works. Documents queue for a worker; each worker holds the document it works on and the
 * next one, so it is never idle while documents wait. A document that runs past `timeoutMs` ends with
 * DocumentTimeoutError and its worker is terminated (which stops even a tight loop) and replaced; a worker that dies
 * fails only its own document. The documents a stopped worker held but had not started go back to the front of the
 * queue, for the worker that replaces it.
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
      this.queue.push({ id: this.nextId++, work, claim: new SharedArrayBuffer(4), resolve, reject });
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
        for (const task of w.tasks.splice(0)) task.reject(new Error("the document pool closed"));
        await w.thread.terminate();
      }),
    );
  }

  /**
   * Hands queued documents to the least busy worker (a new one while the pool is not full and every worker has work),
   * and a worker left without work takes back a document another worker holds but has not started.
   */
  private dispatch(): void {
    for (;;) {
      let worker: PoolWorker | undefined;
      for (const w of this.workers) if (worker === undefined || w.tasks.length < worker.tasks.length) worker = w;
      if (this.queue.length === 0) {
        if (worker === undefined || worker.tasks.length > 0 || !this.takeBack()) return;
        continue;
      }
      if ((worker === undefined || worker.tasks.length > 0) && this.workers.size < this.size) worker = this.spawn();
      if (worker === undefined || worker.tasks.length >= WORKER_DEPTH) return;
      const task = this.queue.shift()!;
      worker.tasks.push(task);
      worker.thread.postMessage({ id: task.id, work: task.work, claim: task.claim } satisfies WorkerTask);
    }
  }

  /** Takes back into the queue one document a worker holds behind the one it works on and has not claimed yet. */
  private takeBack(): boolean {
    for (const w of this.workers) {
      for (let i = w.tasks.length - 1; i >= 1; i--) {
        const task = w.tasks[i]!;
        if (Atomics.compareExchange(new Int32Array(task.claim), 0, CLAIM.unclaimed, CLAIM.takenBack) !== CLAIM.unclaimed) continue;
        w.tasks.splice(i, 1);
        task.claim = new SharedArrayBuffer(4);
        this.queue.push(task);
        return true;
      }
    }
    return false;
  }

  private spawn(): PoolWorker {
    const worker: PoolWorker = { thread: startWorkerThread(this.entry), tasks: [], timer: undefined };
    this.workers.add(worker);
    worker.thread.unref();
    worker.thread.on("message", (reply: WorkerReply) => this.onReply(worker, reply));
    worker.thread.on("error", (err) => this.retire(worker, new DocumentWorkerError(`the document worker failed: ${err.message}`, { cause: err })));
    worker.thread.on("exit", (code) => this.retire(worker, new DocumentWorkerError(`the document worker exited with code ${code}`)));
    return worker;
  }

  private onReply(worker: PoolWorker, reply: WorkerReply): void {
    const task = worker.tasks[0];
    if (task === undefined || task.id !== reply.id) return;
    if (reply.type === "started") {
      worker.timer = setTimeout(() => this.timeOut(worker, task), this.options.timeoutMs);
      return;
    }
    clearTimeout(worker.timer);
    worker.timer = undefined;
    worker.tasks.shift();
    if (reply.type === "done") task.resolve(reply.result);
    else {
      const err = new DocumentWorkerError(`${reply.name}: ${reply.message}`);
      err.stack = reply.stack;
      task.reject(err);
    }
    this.dispatch();
  }

  private timeOut(worker: PoolWorker, task: Task): void {
    if (worker.tasks[0] !== task || !this.workers.delete(worker)) return;
    this.options.logger.warn({ sourceName: task.work.sourceName, timeoutMs: this.options.timeoutMs }, "document ran past the time limit; replacing its worker");
    worker.tasks.shift();
    this.requeue(worker);
    task.reject(new DocumentTimeoutError(this.options.timeoutMs));
    void worker.thread.terminate();
    this.dispatch();
  }

  /** A worker that errored or exited: its document (the first it held) fails, a new worker takes the queue. */
  private retire(worker: PoolWorker, err: Error): void {
    if (!this.workers.delete(worker)) return;
    clearTimeout(worker.timer);
    const task = worker.tasks.shift();
    this.requeue(worker);
    if (task !== undefined) {
      this.options.logger.error({ err, sourceName: task.work.sourceName }, "document worker died; replacing it");
      task.reject(err);
    }
    if (!this.closed) this.dispatch();
  }

  /** Puts the documents a stopped worker held but had not started back at the front of the queue, in order. */
  private requeue(worker: PoolWorker): void {
    const held = worker.tasks.splice(0);
    for (const task of held) task.claim = new SharedArrayBuffer(4);
    this.queue.unshift(...held);
  }
}

function defaultEntry(): URL {
  return siblingEntry(import.meta.url, "document-worker");
}
