import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import type { Logger } from "@ragtune/logger";
import { type Fence, OwnershipLostError, type Resource, type ResourceChange, type ResourceMeta, type ResourceStore } from "./resource.js";

/** The resource was cancelled (its state says so) while this replica worked on it. */
export class WorkCancelledError extends Error {
  constructor() {
    super("cancelled");
    this.name = "WorkCancelledError";
  }
}

/** What `work` gets: the claimed resource, its fence, and a signal that fires on cancel, a lost claim or shutdown. */
export interface LeasedWork<S extends DescMessage> {
  id: string;
  resource: Resource<S>;
  fence: Fence;
  signal: AbortSignal;
  log: Logger;
}

export interface LeasedWorkOptions<S extends DescMessage, E extends DescMessage, B> {
  store: ResourceStore<S, E, B>;
  /** What one resource is, for logs ("dataset build", "eval run"). */
  what: string;
  /** The log field naming the resource's ID (e.g. "datasetVersionId"). */
  idField: string;
  logger: Logger;
  /** How long a claim lasts without renewal; renewed every third of it while the work runs. */
  leaseMs: number;
  /** Unfinished: the resources `resume()` picks up. */
  isOpen(state: MessageShape<S>): boolean;
  /** The state says the work was cancelled: the signal fires with a WorkCancelledError. */
  isCancelled(state: MessageShape<S>): boolean;
  /** The state change (and events) of a claim: e.g. QUEUED → RUNNING, or a "restarted" warning after a takeover. */
  claimChange: (state: MessageShape<S>, previous: ResourceMeta, reason: string) => ResourceChange<S, B>;
  /** Does the work of one claimed resource. An OwnershipLostError or a shutdown ends it quietly (it resumes elsewhere). */
  work: (claimed: LeasedWork<S>) => Promise<void>;
}

/**
 * Long work on resources of the shared history, one at a time per replica, held by a lease: `submit(id)` queues a
 * resource, the loop claims it (skipped when it finished or another replica holds a live lease), renews the lease every
 * third of its length while `work` runs, and aborts the work's signal when the resource is cancelled, the claim is
 * lost to another replica, or the replica stops. `resume()` queues every open resource nobody holds, then rescans every
 * half lease, so a replica that died leaves its work to another once its lease lapses.
 */
export class LeasedWorkRunner<S extends DescMessage, E extends DescMessage, B> {
  private readonly queue: string[] = [];
  private readonly pending = new Set<string>();
  private draining: Promise<void> | undefined;
  private stopping = false;
  private scanTimer: NodeJS.Timeout | undefined;
  private readonly shutdown = new AbortController();
  readonly owner = `${hostname()}-${process.pid}-${randomBytes(4).toString("hex")}`;

  constructor(private readonly options: LeasedWorkOptions<S, E, B>) {}

  /** Whether the replica is stopping (work interrupted by it resumes on another replica or the next start). */
  get stopped(): boolean {
    return this.shutdown.signal.aborted;
  }

  submit(id: string): void {
    if (this.stopping || this.pending.has(id)) return;
    this.pending.add(id);
    this.queue.push(id);
    this.draining ??= this.drain().finally(() => {
      this.draining = undefined;
    });
  }

  /** Queues every open resource nobody holds, now and then every half lease. Returns the IDs queued now. */
  async resume(): Promise<string[]> {
    const queued = await this.scan();
    if (this.scanTimer === undefined && !this.stopping) {
      this.scanTimer = setInterval(() => {
        this.scan().catch((err: unknown) => this.options.logger.warn({ err }, `cannot scan for unfinished ${this.options.what}s`));
      }, Math.max(500, Math.floor(this.options.leaseMs / 2)));
      this.scanTimer.unref();
    }
    return queued;
  }

  /** Interrupts the running work (it resumes on the next start or another replica) and waits for the loop. */
  async close(): Promise<void> {
    this.stopping = true;
    clearInterval(this.scanTimer);
    this.queue.length = 0;
    this.shutdown.abort(new Error("the service is stopping"));
    await this.draining;
  }

  private async scan(): Promise<string[]> {
    const now = Date.now();
    const open = await this.options.store.list((r) => this.options.isOpen(r.state) && (r.owner === "" || r.leaseExpiresAtMs <= now));
    const ids = open.map((r) => r.id).filter((id) => !this.pending.has(id));
    for (const id of ids) this.submit(id);
    return ids;
  }

  private async drain(): Promise<void> {
    while (!this.stopping) {
      const id = this.queue.shift();
      if (id === undefined) return;
      const log = this.options.logger.child({ [this.options.idField]: id });
      try {
        await this.run(id, log);
      } catch (err) {
        if (err instanceof OwnershipLostError) log.warn(`another replica took the ${this.options.what} over; leaving it`);
        else if (this.stopping) log.warn({ err }, `${this.options.what} interrupted by shutdown; it resumes on the next start or another replica`);
        else log.error({ err }, `${this.options.what} failed with a system error`);
      } finally {
        this.pending.delete(id);
      }
    }
  }

  private async run(id: string, log: Logger): Promise<void> {
    const { store, leaseMs } = this.options;
    const claimed = await store.claim(id, this.owner, { leaseMs, change: this.options.claimChange });
    if (claimed === null) return; // finished, gone, or another replica holds it
    const abort = new AbortController();
    const onShutdown = () => abort.abort(this.shutdown.signal.reason);
    this.shutdown.signal.addEventListener("abort", onShutdown, { once: true });
    const timer = setInterval(() => {
      store.renew(id, claimed.fence, leaseMs).then(
        (r) => {
          if (this.options.isCancelled(r.state)) abort.abort(new WorkCancelledError());
        },
        (err: unknown) => {
          if (err instanceof OwnershipLostError) {
            log.warn(`another replica took the ${this.options.what} over; stopping this one`);
            abort.abort(err);
          } else {
            log.warn({ err }, `renewing the ${this.options.what}'s lease failed; retrying`);
          }
        },
      );
    }, Math.max(100, Math.floor(leaseMs / 3)));
    timer.unref();
    try {
      await this.options.work({ id, resource: claimed.resource, fence: claimed.fence, signal: abort.signal, log });
    } finally {
      clearInterval(timer);
      this.shutdown.signal.removeEventListener("abort", onShutdown);
    }
  }
}
