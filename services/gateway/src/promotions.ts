/**
 * Promotion of trained adapters per collection, with version pinning and rollback.
 *
 * Promote: the trainer job must have SUCCEEDED with an adapter (trained for this collection, when it names one); its
 * adapter must have passed every eval gate in a succeeded eval run of it (the given run, or the newest of the
 * collection's runs that evaluated it) unless forced; a pinned collection is replaced only when asked to. The adapter's
 * files are fetched from the trainer into the folder the model endpoint reads (GATEWAY_ADAPTER_DIR: PEFT files for
 * vLLM, the GGUF file for the local model server), loaded on the endpoint under the adapter ID
 * (/v1/load_lora_adapter), recorded, and the adapter it replaces is unloaded unless another collection still serves
 * it. ragtune.gateway.adapter.promoted tells the rest of the system.
 */
import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { isLlmError, type LlmClient } from "@ragtune/llm";
import type { Logger } from "@ragtune/logger";
import {
  AdapterFileKind,
  type EvalRun,
  EvalRunStatus,
  type EvalService,
  type Job,
  JobStatus,
  PageRequestSchema,
  type PromotedAdapter,
  PromotedAdapterSchema,
  type TrainerService,
} from "@ragtune/proto";
import type { PromotionStore } from "./promotion-store.js";

export type LoraFormat = "peft" | "gguf";

export interface PromotionsOptions {
  store: PromotionStore;
  trainer: Pick<Client<typeof TrainerService>, "getJob" | "downloadAdapter">;
  evals: Pick<Client<typeof EvalService>, "getEvalRun" | "listEvalRuns">;
  endpoint: Pick<LlmClient, "loadLoraAdapter" | "unloadLoraAdapter">;
  /** Folder shared with the model endpoint; each adapter gets `<dir>/<adapter ID>/`. */
  adapterDir: string;
  loraFormat: LoraFormat;
  /** Publishes ragtune.gateway.adapter.promoted. */
  publish(adapter: PromotedAdapter): Promise<void>;
  logger: Logger;
  now?: () => Date;
}

export interface PromoteRequest {
  collection: string;
  jobId: string;
  evalRunId: string;
  force: boolean;
  pin: boolean;
  replacePinned: boolean;
}

const failed = (message: string) => new ConnectError(message, Code.FailedPrecondition);

export class Promotions {
  readonly #o: PromotionsOptions;
  readonly #now: () => Date;
  /** One promotion at a time per collection in this replica (the KV's compare-and-set orders replicas). */
  readonly #tails = new Map<string, Promise<unknown>>();

  constructor(options: PromotionsOptions) {
    this.#o = options;
    this.#now = options.now ?? (() => new Date());
  }

  promote(req: PromoteRequest): Promise<PromotedAdapter> {
    return this.#serial(req.collection, () => this.#promote(req));
  }

  rollback(collection: string): Promise<PromotedAdapter> {
    return this.#serial(collection, () => this.#rollback(collection));
  }

  async list(collection: string): Promise<PromotedAdapter[]> {
    return [...((await this.#o.store.record(collection))?.history ?? [])];
  }

  /**
   * Loads a SUCCEEDED job's adapter on the model endpoint without promoting it (the pipeline's eval stage evaluates it
   * there under its adapter ID). FAILED_PRECONDITION when the job has no adapter or the endpoint cannot load it.
   */
  async stageAdapter(jobId: string): Promise<string> {
    const job = await this.#job(jobId);
    if (job.status !== JobStatus.SUCCEEDED || job.adapter === undefined) {
      throw failed(`trainer job ${job.id} is ${JobStatus[job.status]} and has no adapter to evaluate`);
    }
    await this.#load(job.adapter.id, await this.#materialize(job));
    return job.adapter.id;
  }

  /** Loads every collection's serving adapter on the endpoint (after a restart of the endpoint or the gateway). */
  async reloadServing(): Promise<void> {
    const seen = new Set<string>();
    for (const adapter of await this.#o.store.allCurrent()) {
      if (seen.has(adapter.adapterId)) continue;
      seen.add(adapter.adapterId);
      try {
        const job = await this.#job(adapter.jobId);
        await this.#load(adapter.adapterId, await this.#materialize(job));
      } catch (err) {
        this.#o.logger.warn({ err, collection: adapter.collection, adapterId: adapter.adapterId }, "could not load a promoted adapter on the model endpoint");
      }
    }
  }

  #serial<T>(collection: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(collection) ?? Promise.resolve();
    const run = previous.catch(() => undefined).then(work);
    const tail = run.catch(() => undefined);
    this.#tails.set(collection, tail);
    void tail.then(() => {
      if (this.#tails.get(collection) === tail) this.#tails.delete(collection);
    });
    return run;
  }

  async #promote(req: PromoteRequest): Promise<PromotedAdapter> {
    const job = await this.#job(req.jobId);
    if (job.status !== JobStatus.SUCCEEDED || job.adapter === undefined) {
      throw failed(`trainer job ${job.id} is ${JobStatus[job.status]} and has no adapter; only a SUCCEEDED job's adapter can be promoted`);
    }
    if (job.collection !== "" && job.collection !== req.collection) {
      throw failed(`trainer job ${job.id} was trained for collection "${job.collection}", not "${req.collection}"`);
    }
    const adapterId = job.adapter.id;
    const evalRunId = req.force ? req.evalRunId : await this.#gateEvidence(req.collection, adapterId, req.evalRunId);
    const current = await this.#o.store.current(req.collection);
    if (current?.pinned === true && current.adapterId !== adapterId && !req.replacePinned) {
      throw failed(`collection "${req.collection}" is pinned to adapter ${current.adapterId}; promote with replace_pinned to replace it`);
    }
    await this.#load(adapterId, await this.#materialize(job));
    const entry = create(PromotedAdapterSchema, {
      collection: req.collection,
      adapterId,
      jobId: job.id,
      baseModel: job.adapter.baseModel || job.baseModel,
      evalRunId,
      promotedAt: timestampFromDate(this.#now()),
      pinned: req.pin,
      forced: req.force,
      servedName: adapterId,
    });
    let replaced: PromotedAdapter | undefined;
    await this.#o.store.change(req.collection, (history) => {
      replaced = history[0];
      if (replaced?.pinned === true && replaced.adapterId !== adapterId && !req.replacePinned) {
        throw failed(`collection "${req.collection}" was pinned to adapter ${replaced.adapterId} meanwhile; promote with replace_pinned to replace it`);
      }
      entry.previousAdapterId = replaced?.adapterId ?? "";
      return [entry, ...history];
    });
    await this.#afterSwitch(entry, replaced);
    return entry;
  }

  async #rollback(collection: string): Promise<PromotedAdapter> {
    const history = await this.list(collection);
    const [current, previous] = history;
    if (current === undefined || previous === undefined) {
      throw failed(`collection "${collection}" has ${current === undefined ? "no promoted adapter" : "no adapter promoted before the current one"} to roll back to`);
    }
    await this.#load(previous.adapterId, await this.#materialize(await this.#job(previous.jobId)));
    const entry = create(PromotedAdapterSchema, { ...previous, previousAdapterId: current.adapterId, promotedAt: timestampFromDate(this.#now()), pinned: false });
    let replaced: PromotedAdapter | undefined;
    await this.#o.store.change(collection, (now) => {
      if (now[0]?.adapterId !== current.adapterId || now[1]?.adapterId !== previous.adapterId) {
        throw new ConnectError(`the promotions of collection "${collection}" changed during the rollback; look at them again and retry`, Code.Aborted);
      }
      replaced = now[0];
      return [entry, ...now.slice(2)]; // the rolled-back adapter leaves the history: a second rollback goes further back
    });
    await this.#afterSwitch(entry, replaced);
    return entry;
  }

  async #afterSwitch(entry: PromotedAdapter, replaced: PromotedAdapter | undefined): Promise<void> {
    const log = this.#o.logger.child({ collection: entry.collection, adapterId: entry.adapterId });
    if (replaced !== undefined && replaced.adapterId !== entry.adapterId) {
      const stillServing = (await this.#o.store.allCurrent()).some((a) => a.adapterId === replaced!.adapterId);
      if (!stillServing) {
        await this.#o.endpoint.unloadLoraAdapter(replaced.adapterId).catch((err: unknown) => log.warn({ err, unloaded: replaced!.adapterId }, "could not unload the replaced adapter"));
      }
    }
    await this.#o.publish(entry);
    log.info({ previous: entry.previousAdapterId, evalRunId: entry.evalRunId, forced: entry.forced, pinned: entry.pinned }, "adapter promoted");
  }

  async #job(jobId: string): Promise<Job> {
    if (jobId.trim() === "") throw new ConnectError("job_id is empty; name the SUCCEEDED trainer job whose adapter to promote", Code.InvalidArgument);
    const job = (await this.#o.trainer.getJob({ jobId })).job;
    if (job === undefined) throw new ConnectError(`trainer job ${jobId} not found`, Code.NotFound);
    return job;
  }

  /** The eval run that shows the adapter passed every gate; FAILED_PRECONDITION when there is none. */
  async #gateEvidence(collection: string, adapterId: string, evalRunId: string): Promise<string> {
    if (evalRunId !== "") {
      const run = (await this.#o.evals.getEvalRun({ evalRunId })).run;
      if (run === undefined) throw new ConnectError(`eval run ${evalRunId} not found`, Code.NotFound);
      const problem = gateProblem(run, adapterId);
      if (problem !== undefined) throw failed(`${problem}; promote with force to override`);
      return run.id;
    }
    let token = "";
    const problems: string[] = [];
    do {
      const res = await this.#o.evals.listEvalRuns({ collection, status: EvalRunStatus.SUCCEEDED, page: create(PageRequestSchema, { pageSize: 100, pageToken: token }) });
      for (const run of res.runs) {
        if (!run.adapters.includes(adapterId)) continue;
        const problem = gateProblem(run, adapterId);
        if (problem === undefined) return run.id;
        problems.push(problem);
      }
      token = res.page?.nextPageToken ?? "";
    } while (token !== "");
    throw failed(
      problems.length > 0
        ? `adapter ${adapterId} did not pass the eval gates: ${problems[0]}; promote with force to override`
        : `no succeeded eval run of collection "${collection}" evaluated adapter ${adapterId}; run an eval of it first, or promote with force`,
    );
  }

  /** Writes the adapter's files where the endpoint reads them (once; verified by SHA-256) and returns the path to load. */
  async #materialize(job: Job): Promise<string> {
    const adapter = job.adapter!;
    const dir = join(this.#o.adapterDir, adapter.id);
    const kinds = this.#o.loraFormat === "gguf" ? [AdapterFileKind.GGUF] : [AdapterFileKind.PEFT_CONFIG, AdapterFileKind.PEFT_WEIGHTS];
    const files = adapter.files.filter((f) => kinds.includes(f.kind));
    if (files.length !== kinds.length) {
      throw failed(`adapter ${adapter.id} has no ${this.#o.loraFormat === "gguf" ? "GGUF file" : "PEFT files"} for this model endpoint (GATEWAY_LORA_FORMAT=${this.#o.loraFormat})`);
    }
    await mkdir(dir, { recursive: true });
    for (const file of files) {
      const target = join(dir, file.fileName);
      const size = await stat(target).then((s) => s.size, () => -1);
      if (file.artifact !== undefined && BigInt(size) === file.artifact.sizeBytes) continue;
      await this.#download(job.id, file.kind, target);
    }
    return this.#o.loraFormat === "gguf" ? join(dir, files[0]!.fileName) : dir;
  }

  async #download(jobId: string, kind: AdapterFileKind, target: string): Promise<void> {
    const partial = `${target}.partial-${process.pid}`;
    const out = createWriteStream(partial);
    const hash = createHash("sha256");
    let expected = "";
    try {
      for await (const piece of this.#o.trainer.downloadAdapter({ jobId, kind })) {
        expected = piece.sha256;
        hash.update(piece.data);
        if (!out.write(piece.data)) await new Promise<void>((resolve) => out.once("drain", () => resolve()));
      }
      await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
      const actual = hash.digest("hex");
      if (expected !== "" && actual !== expected) throw new Error(`adapter file of job ${jobId} arrived with SHA-256 ${actual}, expected ${expected}`);
      await rename(partial, target);
    } catch (err) {
      out.destroy();
      await rm(partial, { force: true });
      throw err;
    }
  }

  async #load(adapterId: string, path: string): Promise<void> {
    try {
      await this.#o.endpoint.loadLoraAdapter(adapterId, path);
    } catch (err) {
      if (isLlmError(err) && err.kind === "bad_request" && /already (?:been )?loaded|already exists|in use/i.test(err.serverMessage ?? err.message)) return;
      if (isLlmError(err) && (err.kind === "bad_request" || err.status === 404)) {
        throw failed(`the model endpoint could not load adapter ${adapterId} from ${path}: ${err.serverMessage ?? err.message}`);
      }
      if (isLlmError(err)) throw new ConnectError(`the model endpoint failed to load adapter ${adapterId}: ${err.message}`, Code.Unavailable);
      throw err;
    }
  }
}

/** Why a run does not show that the adapter passed every gate, or undefined when it does. */
export function gateProblem(run: EvalRun, adapterId: string): string | undefined {
  if (run.status !== EvalRunStatus.SUCCEEDED || run.report === undefined) return `eval run ${run.id} is ${EvalRunStatus[run.status]}, not SUCCEEDED`;
  if (!run.adapters.includes(adapterId)) return `eval run ${run.id} did not evaluate adapter ${adapterId}`;
  const gates = run.report.gates.filter((g) => g.model === adapterId);
  if (gates.length === 0) return `eval run ${run.id} checked no gate for adapter ${adapterId}`;
  const failing = gates.filter((g) => !g.passed);
  if (failing.length > 0) return `adapter ${adapterId} failed ${failing.map((g) => `${g.name} (${g.rule}: ${g.value.toFixed(3)})`).join(", ")} in eval run ${run.id}`;
  return undefined;
}
