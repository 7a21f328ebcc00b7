/**
 * Promotion of trained adapters per collection, with version pinning and rollback.
 *
 * Adapters are content-addressed: the endpoint serves an adapter under `<collection>-<job ID>@<digest>` (see
 * `servedNameOf`), where the digest is taken over the SHA-256 of the files the endpoint loads. The eval stage
 * evaluates that name (stageAdapter), the gates are read for that name, and Ask sends it as `model`; a different
 * content is a different name, and a name's files are checked against its hashes before every load, so a reload under
 * a name never serves other weights.
 *
 * Promote: the trainer job must have SUCCEEDED with an adapter (trained for this collection, when it names one); its
 * served name must have passed every eval gate in a succeeded eval run (the given run, or the newest of the
 * collection's runs that evaluated it) unless forced; a pinned collection is replaced only when asked to. The adapter's
 * files are fetched from the trainer into the folder the model endpoint reads (GATEWAY_ADAPTER_DIR/<served name>/:
 * PEFT files for vLLM, the GGUF file for the local model server) and checked for what the endpoint cannot serve (a
 * LoRA rank above GATEWAY_MAX_LORA_RANK, modules_to_save); a trial load on the endpoint (/v1/load_lora_adapter) turns
 * its refusal (e.g. a shape mismatch) into FAILED_PRECONDITION. Then canaries: a few items of the eval run that
 * justified it are asked again at temperature 0 and must get the answers recorded then; otherwise the new adapter is
 * unloaded and the collection keeps serving the previous one. Only then is it recorded, the adapter it replaces
 * unloaded unless another collection still serves it, and ragtune.gateway.adapter.promoted tells the rest of the
 * system. A rollback goes through the same load and canary check.
 */
import { createHash, randomUUID } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readdir, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { loadDatasetTestSplit } from "@ragtune/eval-service/eval-items";
import { isLlmError, type LlmClient } from "@ragtune/llm";
import type { Logger } from "@ragtune/logger";
import {
  type AdapterFile,
  AdapterFileKind,
  type DatasetService,
  EvalPromptFormat,
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
  evals: Pick<Client<typeof EvalService>, "getEvalRun" | "listEvalRuns" | "listEvalItemResults">;
  /** The canaries' prompts: the eval run's items from its dataset version's test split, rendered as the eval does. */
  dataset: Client<typeof DatasetService>;
  endpoint: Pick<LlmClient, "loadLoraAdapter" | "unloadLoraAdapter" | "complete" | "chat">;
  /** Folder shared with the model endpoint; each adapter gets `<dir>/<served name>/`. */
  adapterDir: string;
  loraFormat: LoraFormat;
  /** Highest LoRA rank the endpoint serves (vLLM's --max-lora-rank); default 16, vLLM's default. */
  maxLoraRank?: number;
  /** Eval items asked again after each load (canaries); default 3, 0 turns the check off. */
  canaryItems?: number;
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

/** The ranks vLLM's --max-lora-rank accepts. */
export const VLLM_MAX_LORA_RANKS = [1, 8, 16, 32, 64, 128, 256, 320, 512] as const;

/** Hex digits of the content digest in a served name (64 bits). */
const DIGEST_CHARS = 16;

/**
 * The SHA-256 (hex) of an adapter's content: of the `sha256sum` lines (`<hex>  <file name>\n`) of the files the
 * endpoint loads, in file-name order. Check a folder by hand with
 * `sha256sum adapter_config.json adapter_model.safetensors | sha256sum` (PEFT) or `sha256sum adapter.gguf | sha256sum`.
 */
export function adapterDigest(files: readonly { fileName: string; sha256: string }[]): string {
  const lines = [...files]
    .sort((a, b) => (a.fileName < b.fileName ? -1 : a.fileName > b.fileName ? 1 : 0))
    .map((f) => `${f.sha256}  ${f.fileName}\n`)
    .join("");
  return createHash("sha256").update(lines).digest("hex");
}

/**
 * The name the endpoint serves an adapter under: `<collection>-<job ID>@<first 16 hex digits of adapterDigest>`
 * (`adapter-<job ID>@…` for a job trained for no collection). The collection and job ID keep only [A-Za-z0-9._-]
 * (anything else becomes `_`, each part at most 64 characters), so the name is a plain string for vLLM (whose LoRA
 * names and `model` field are matched as strings) and the local model server, and a single folder name on disk.
 */
export function servedNameOf(job: Pick<Job, "id" | "collection">, digest: string): string {
  const part = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 64) || "_";
  return `${part(job.collection || "adapter")}-${part(job.id)}@${digest.slice(0, DIGEST_CHARS)}`;
}

/** What a LoRA load needs: the served name and the path the endpoint loads. */
interface Prepared {
  name: string;
  path: string;
}

/** One canary: an eval item's prompt and the answer the eval recorded for the served name. */
interface Canary {
  itemId: string;
  prompt: string;
  userTurn: string;
  recorded: string;
}

export class Promotions {
  readonly #o: PromotionsOptions;
  readonly #now: () => Date;
  readonly #maxRank: number;
  readonly #canaryItems: number;
  /** One promotion at a time per collection in this replica (the KV's compare-and-set orders replicas). */
  readonly #tails = new Map<string, Promise<unknown>>();
  /** Adapter folders being written, by served name (a stage and a promotion of one adapter share the download). */
  readonly #preparing = new Map<string, Promise<Prepared>>();

  constructor(options: PromotionsOptions) {
    this.#o = options;
    this.#now = options.now ?? (() => new Date());
    this.#maxRank = options.maxLoraRank ?? 16;
    this.#canaryItems = options.canaryItems ?? 3;
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

  /** The name a SUCCEEDED job's adapter is served under (from the trainer's recorded hashes; nothing is loaded). */
  async servedName(jobId: string): Promise<string> {
    return this.#nameOf(await this.#succeeded(await this.#job(jobId), "be served"));
  }

  /**
   * Loads a SUCCEEDED job's adapter on the model endpoint without promoting it and returns its served name (the
   * pipeline's eval stage evaluates it there under that name). FAILED_PRECONDITION when the job has no adapter or the
   * endpoint cannot serve it.
   */
  async stageAdapter(jobId: string): Promise<string> {
    const job = await this.#succeeded(await this.#job(jobId), "evaluate");
    const prepared = await this.#prepare(job);
    await this.#load(prepared);
    return prepared.name;
  }

  /** Loads every collection's serving adapter on the endpoint (after a restart of the endpoint or the gateway). */
  async reloadServing(): Promise<void> {
    const seen = new Set<string>();
    for (const adapter of await this.#o.store.allCurrent()) {
      const name = adapter.servedName || adapter.adapterId;
      if (seen.has(name)) continue;
      seen.add(name);
      try {
        const prepared = name.includes("@") ? await this.#previousContent(adapter) : await this.#prepare(await this.#job(adapter.jobId));
        await this.#load({ name, path: prepared.path });
      } catch (err) {
        this.#o.logger.warn({ err, collection: adapter.collection, adapterId: adapter.adapterId, servedName: name }, "could not load a promoted adapter on the model endpoint");
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

  async #succeeded(job: Job, what: string): Promise<Job> {
    if (job.status !== JobStatus.SUCCEEDED || job.adapter === undefined) {
      throw failed(`trainer job ${job.id} is ${JobStatus[job.status]} and has no adapter; only a SUCCEEDED job's adapter can ${what}`);
    }
    return job;
  }

  async #promote(req: PromoteRequest): Promise<PromotedAdapter> {
    const job = await this.#succeeded(await this.#job(req.jobId), "be promoted");
    if (job.collection !== "" && job.collection !== req.collection) {
      throw failed(`trainer job ${job.id} was trained for collection "${job.collection}", not "${req.collection}"`);
    }
    const adapterId = job.adapter!.id;
    const name = this.#nameOf(job);
    const evalRunId = req.force ? req.evalRunId : await this.#gateEvidence(req.collection, name, req.evalRunId);
    const current = await this.#o.store.current(req.collection);
    if (current?.pinned === true && current.adapterId !== adapterId && !req.replacePinned) {
      throw failed(`collection "${req.collection}" is pinned to adapter ${current.adapterId}; promote with replace_pinned to replace it`);
    }
    const prepared = await this.#prepare(job);
    await this.#load(prepared);
    const canaryCheck = await this.#canaryOrUndo(prepared.name, evalRunId, req.collection, current, `promotion of adapter ${adapterId}`);
    const entry = create(PromotedAdapterSchema, {
      collection: req.collection,
      adapterId,
      jobId: job.id,
      baseModel: job.adapter!.baseModel || job.baseModel,
      evalRunId,
      promotedAt: timestampFromDate(this.#now()),
      pinned: req.pin,
      forced: req.force,
      servedName: prepared.name,
      canaryCheck,
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
    const prepared = await this.#previousContent(previous);
    await this.#load(prepared);
    const canaryCheck = await this.#canaryOrUndo(prepared.name, previous.evalRunId, collection, current, `rollback to adapter ${previous.adapterId}`);
    const entry = create(PromotedAdapterSchema, {
      ...previous,
      canaryCheck,
      previousAdapterId: current.adapterId,
      promotedAt: timestampFromDate(this.#now()),
      pinned: false,
      servedName: prepared.name,
    });
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
    const log = this.#o.logger.child({ collection: entry.collection, adapterId: entry.adapterId, servedName: entry.servedName });
    const replacedName = replaced === undefined ? "" : replaced.servedName || replaced.adapterId;
    if (replacedName !== "" && replacedName !== entry.servedName) await this.#unloadUnlessServing(replacedName, log);
    await this.#o.publish(entry);
    log.info({ previous: entry.previousAdapterId, evalRunId: entry.evalRunId, forced: entry.forced, pinned: entry.pinned }, "adapter promoted");
  }

  async #unloadUnlessServing(name: string, log: Logger): Promise<void> {
    const stillServing = (await this.#o.store.allCurrent()).some((a) => (a.servedName || a.adapterId) === name);
    if (stillServing) return;
    await this.#o.endpoint.unloadLoraAdapter(name).catch((err: unknown) => log.warn({ err, unloaded: name }, "could not unload an adapter"));
  }

  /**
   * Asks the canaries of `evalRunId` again under `name`; on a different answer (or an endpoint failure) the adapter just
   * loaded is unloaded again, the collection keeps `current`, and the change fails with the first difference.
   * Returns what the check found (recorded with the promotion).
   */
  async #canaryOrUndo(name: string, evalRunId: string, collection: string, current: PromotedAdapter | undefined, what: string): Promise<string> {
    const log = this.#o.logger.child({ collection, servedName: name, evalRunId });
    let problem: string | undefined;
    let code = Code.FailedPrecondition;
    try {
      const check = await this.#canaryCheck(name, evalRunId, log);
      if (check.ok) return check.found;
      problem = check.found;
    } catch (err) {
      if (!isLlmError(err)) throw err;
      problem = `the model endpoint failed a canary request: ${err.message}`;
      code = Code.Unavailable;
    }
    const currentName = current === undefined ? "" : current.servedName || current.adapterId;
    if (currentName !== name) await this.#unloadUnlessServing(name, log);
    const keeps = current === undefined ? "the base model" : `adapter ${current.adapterId} (${currentName})`;
    log.warn({ problem, keeps: currentName }, "canary check failed; change rolled back");
    throw new ConnectError(`the ${what} was rolled back: canary check of ${name} failed: ${problem}; collection "${collection}" still serves ${keeps}`, code);
  }

  /**
   * Asks the eval run's canaries under `name`: ok with what matched (or why nothing could be checked), or not ok with
   * the first answer that differs from the one recorded.
   */
  async #canaryCheck(name: string, evalRunId: string, log: Logger): Promise<{ ok: boolean; found: string }> {
    const unchecked = (reason: string) => {
      log.warn({ reason }, "no canary check");
      return { ok: true, found: `not checked: ${reason}` };
    };
    if (this.#canaryItems === 0) return unchecked("canaries are off (GATEWAY_CANARY_ITEMS=0)");
    if (evalRunId === "") return unchecked("no eval run justified this adapter (forced without one)");
    const run = (await this.#o.evals.getEvalRun({ evalRunId })).run;
    if (run === undefined) throw new ConnectError(`eval run ${evalRunId} not found`, Code.NotFound);
    const skip = !run.adapters.includes(name)
      ? `eval run ${run.id} did not evaluate ${name}`
      : (run.sampling?.temperature ?? 0) !== 0
        ? `eval run ${run.id} sampled at temperature ${run.sampling?.temperature}, so its answers cannot be asked for again`
        : run.datasetVersionId === ""
          ? `eval run ${run.id} evaluated an uploaded file, whose prompts the gateway cannot read`
          : undefined;
    if (skip !== undefined) return unchecked(skip);
    const canaries = await this.#canaries(run, name);
    if (canaries.length === 0) return unchecked(`eval run ${run.id} holds no answer of ${name} to check`);
    const chat = run.promptFormat === EvalPromptFormat.CHAT;
    const maxTokens = run.sampling?.maxTokens ?? 200;
    for (const c of canaries) {
      const result = chat
        ? await this.#o.endpoint.chat({ model: name, messages: [{ role: "user", content: c.userTurn }], temperature: 0, maxTokens })
        : await this.#o.endpoint.complete({ model: name, prompt: c.prompt, temperature: 0, maxTokens });
      if (result.text !== c.recorded) {
        return { ok: false, found: `item ${c.itemId} was answered ${quote(result.text)} where eval run ${run.id} recorded ${quote(c.recorded)}` };
      }
    }
    log.info({ items: canaries.map((c) => c.itemId) }, "canary answers match the eval run's");
    return { ok: true, found: `${canaries.length} item${canaries.length === 1 ? "" : "s"} of eval run ${run.id} answered as recorded (${canaries.map((c) => c.itemId).join(", ")})` };
  }

  /** The first `canaryItems` items of the run with an answer of `name` recorded (not failed), with their prompts. */
  async #canaries(run: EvalRun, name: string): Promise<Canary[]> {
    const recorded: { itemId: string; recorded: string }[] = [];
    let token = "";
    do {
      const res = await this.#o.evals.listEvalItemResults({ evalRunId: run.id, page: create(PageRequestSchema, { pageSize: 100, pageToken: token }) });
      for (const r of res.results) {
        const answer = r.answers.find((a) => a.model === name);
        if (answer !== undefined && answer.error === "") recorded.push({ itemId: r.itemId, recorded: answer.text });
        if (recorded.length >= this.#canaryItems) break;
      }
      token = recorded.length >= this.#canaryItems ? "" : (res.page?.nextPageToken ?? "");
    } while (token !== "");
    if (recorded.length === 0) return [];
    const { items } = await loadDatasetTestSplit(this.#o.dataset, run.datasetVersionId);
    const byId = new Map(items.map((i) => [i.id, i]));
    const out: Canary[] = [];
    for (const r of recorded) {
      const item = byId.get(r.itemId);
      if (item === undefined) throw failed(`eval run ${run.id}'s item ${r.itemId} is no longer in the test split of dataset version ${run.datasetVersionId}; the canary check cannot ask it`);
      out.push({ ...r, prompt: item.prompt, userTurn: item.userTurn });
    }
    return out;
  }

  async #job(jobId: string): Promise<Job> {
    if (jobId.trim() === "") throw new ConnectError("job_id is empty; name the SUCCEEDED trainer job whose adapter to promote", Code.InvalidArgument);
    const job = (await this.#o.trainer.getJob({ jobId })).job;
    if (job === undefined) throw new ConnectError(`trainer job ${jobId} not found`, Code.NotFound);
    return job;
  }

  /** The eval run that shows the served name passed every gate; FAILED_PRECONDITION when there is none. */
  async #gateEvidence(collection: string, name: string, evalRunId: string): Promise<string> {
    if (evalRunId !== "") {
      const run = (await this.#o.evals.getEvalRun({ evalRunId })).run;
      if (run === undefined) throw new ConnectError(`eval run ${evalRunId} not found`, Code.NotFound);
      const problem = gateProblem(run, name);
      if (problem !== undefined) throw failed(`${problem}; promote with force to override`);
      return run.id;
    }
    let token = "";
    const problems: string[] = [];
    do {
      const res = await this.#o.evals.listEvalRuns({ collection, status: EvalRunStatus.SUCCEEDED, page: create(PageRequestSchema, { pageSize: 100, pageToken: token }) });
      for (const run of res.runs) {
        if (!run.adapters.includes(name)) continue;
        const problem = gateProblem(run, name);
        if (problem === undefined) return run.id;
        problems.push(problem);
      }
      token = res.page?.nextPageToken ?? "";
    } while (token !== "");
    throw failed(
      problems.length > 0
        ? `adapter ${name} did not pass the eval gates: ${problems[0]}; promote with force to override`
        : `no succeeded eval run of collection "${collection}" evaluated adapter ${name}; run an eval of it first, or promote with force`,
    );
  }

  /** The files the endpoint loads in this gateway's format, each with the SHA-256 the trainer recorded. */
  #servedFiles(job: Job): AdapterFile[] {
    const adapter = job.adapter!;
    const kinds = this.#o.loraFormat === "gguf" ? [AdapterFileKind.GGUF] : [AdapterFileKind.PEFT_CONFIG, AdapterFileKind.PEFT_WEIGHTS];
    const files = kinds.map((k) => adapter.files.find((f) => f.kind === k));
    if (files.some((f) => f === undefined)) {
      throw failed(`adapter ${adapter.id} has no ${this.#o.loraFormat === "gguf" ? "GGUF file" : "PEFT files"} for this model endpoint (GATEWAY_LORA_FORMAT=${this.#o.loraFormat})`);
    }
    for (const f of files) {
      if (!/^[0-9a-f]{64}$/.test(f!.artifact?.sha256 ?? "")) throw failed(`the trainer recorded no SHA-256 for file ${f!.fileName} of adapter ${adapter.id}; it cannot be served by content`);
      if (f!.fileName === "" || f!.fileName.includes("/") || f!.fileName.startsWith(".")) throw failed(`adapter ${adapter.id} names a file "${f!.fileName}" that cannot be written`);
    }
    return files as AdapterFile[];
  }

  #nameOf(job: Job): string {
    return servedNameOf(job, adapterDigest(this.#servedFiles(job).map((f) => ({ fileName: f.fileName, sha256: f.artifact!.sha256 }))));
  }

  /**
   * The content a promotion served, to load it again: from its folder when the files there still hash to its name
   * (the trainer's job may hold other files since, e.g. after a retrain), else from the trainer when the job's files
   * are still that content. FAILED_PRECONDITION when neither has it.
   */
  async #previousContent(entry: PromotedAdapter): Promise<Prepared> {
    const name = entry.servedName;
    const digest = name.slice(name.lastIndexOf("@") + 1);
    if (name.includes("@")) {
      const onDisk = await this.#verifiedFolder(name, digest);
      if (onDisk !== undefined) return onDisk;
    }
    const prepared = await this.#prepare(await this.#succeeded(await this.#job(entry.jobId), "be served"));
    if (name !== "" && name.includes("@") && prepared.name !== name) {
      throw failed(`adapter ${entry.adapterId} was served as ${name}, but its folder no longer holds that content and trainer job ${entry.jobId} now holds ${prepared.name}`);
    }
    return prepared;
  }

  /** The folder of a served name when its files (this gateway's format) hash to the name's digest. */
  async #verifiedFolder(name: string, digest: string): Promise<Prepared | undefined> {
    const dir = join(this.#o.adapterDir, name);
    const entries = await readdir(dir).catch(() => [] as string[]);
    const fileNames = this.#o.loraFormat === "gguf" ? entries.filter((f) => f.endsWith(".gguf")) : ["adapter_config.json", "adapter_model.safetensors"];
    if (fileNames.length !== (this.#o.loraFormat === "gguf" ? 1 : 2)) return undefined;
    const files: { fileName: string; sha256: string }[] = [];
    for (const fileName of fileNames) {
      const sha256 = await sha256Of(join(dir, fileName));
      if (sha256 === undefined) return undefined;
      files.push({ fileName, sha256 });
    }
    if (!adapterDigest(files).startsWith(digest) || digest.length !== DIGEST_CHARS) return undefined;
    return { name, path: this.#o.loraFormat === "gguf" ? join(dir, fileNames[0]!) : dir };
  }

  /**
   * Writes the adapter's files to `<adapter dir>/<served name>/` (a file already there is kept only when its SHA-256 is
   * the recorded one), checks that the endpoint can serve it (rank, modules_to_save) and returns what to load.
   */
  #prepare(job: Job): Promise<Prepared> {
    const name = this.#nameOf(job);
    let pending = this.#preparing.get(name);
    if (pending === undefined) {
      pending = this.#write(job, name).finally(() => this.#preparing.delete(name));
      this.#preparing.set(name, pending);
    }
    return pending;
  }

  async #write(job: Job, name: string): Promise<Prepared> {
    const adapter = job.adapter!;
    const served = this.#servedFiles(job);
    const dir = join(this.#o.adapterDir, name);
    await mkdir(dir, { recursive: true });
    // The PEFT config tells the rank and modules_to_save, also when the endpoint loads the GGUF file.
    const config = adapter.files.find((f) => f.kind === AdapterFileKind.PEFT_CONFIG);
    const files = config === undefined || served.includes(config) ? served : [...served, config];
    for (const file of files) {
      const target = join(dir, file.fileName);
      const expected = file.artifact?.sha256 ?? "";
      if (expected !== "" && (await sha256Of(target)) === expected) continue;
      await this.#download(job.id, file, target);
    }
    const configPath = config === undefined ? undefined : join(dir, config.fileName);
    this.#checkServable(adapter.id, configPath === undefined ? undefined : await readFile(configPath, "utf8"), job.hyperparameters?.rank);
    return { name, path: this.#o.loraFormat === "gguf" ? join(dir, served[0]!.fileName) : dir };
  }

  /** FAILED_PRECONDITION for what vLLM refuses to serve: a rank above the endpoint's maximum, modules_to_save. */
  #checkServable(adapterId: string, configText: string | undefined, jobRank: number | undefined): void {
    let rank = jobRank;
    if (configText !== undefined) {
      let config: { r?: unknown; rank_pattern?: unknown; modules_to_save?: unknown };
      try {
        config = JSON.parse(configText) as typeof config;
      } catch {
        throw failed(`adapter ${adapterId}'s adapter_config.json is not JSON`);
      }
      const saved = Array.isArray(config.modules_to_save) ? config.modules_to_save.map(String) : [];
      if (saved.length > 0) {
        throw failed(
          `adapter ${adapterId} saves whole modules (modules_to_save: ${saved.join(", ")}), which vLLM cannot serve as a LoRA adapter; train it without modules_to_save`,
        );
      }
      const ranks = [config.r, ...(config.rank_pattern !== null && typeof config.rank_pattern === "object" ? Object.values(config.rank_pattern) : [])].filter(
        (r): r is number => typeof r === "number",
      );
      if (ranks.length > 0) rank = Math.max(...ranks);
    }
    if (rank !== undefined && rank > this.#maxRank) {
      throw failed(
        `adapter ${adapterId} has LoRA rank ${rank}, above the model endpoint's maximum of ${this.#maxRank} (GATEWAY_MAX_LORA_RANK, vLLM's --max-lora-rank); ` +
          `train with rank ≤ ${this.#maxRank}, or raise both settings (vLLM accepts ${VLLM_MAX_LORA_RANKS.join(", ")})`,
      );
    }
  }

  async #download(jobId: string, file: AdapterFile, target: string): Promise<void> {
    const partial = `${target}.partial-${process.pid}-${randomUUID()}`;
    const out = createWriteStream(partial);
    const hash = createHash("sha256");
    let streamed = "";
    try {
      for await (const piece of this.#o.trainer.downloadAdapter({ jobId, kind: file.kind })) {
        streamed = piece.sha256;
        hash.update(piece.data);
        if (!out.write(piece.data)) await new Promise<void>((resolve) => out.once("drain", () => resolve()));
      }
      await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
      const actual = hash.digest("hex");
      for (const expected of [file.artifact?.sha256 ?? "", streamed]) {
        if (expected !== "" && actual !== expected) throw failed(`adapter file ${file.fileName} of job ${jobId} arrived with SHA-256 ${actual}, expected ${expected}`);
      }
      await rename(partial, target);
    } catch (err) {
      out.destroy();
      await rm(partial, { force: true });
      throw err;
    }
  }

  async #load({ name, path }: Prepared): Promise<void> {
    try {
      await this.#o.endpoint.loadLoraAdapter(name, path);
    } catch (err) {
      // Loaded before under this name: the same content (the name is its hash; the canaries check the endpoint).
      if (isLlmError(err) && err.kind === "bad_request" && /already (?:been )?loaded|already exists|in use/i.test(err.serverMessage ?? err.message)) return;
      if (isLlmError(err) && (err.kind === "bad_request" || err.status === 404)) {
        throw failed(`the model endpoint could not load adapter ${name} from ${path}: ${err.serverMessage ?? err.message}`);
      }
      if (isLlmError(err)) throw new ConnectError(`the model endpoint failed to load adapter ${name}: ${err.message}`, Code.Unavailable);
      throw err;
    }
  }
}

/** The SHA-256 of a file, or undefined when there is none. */
async function sha256Of(path: string): Promise<string | undefined> {
  const hash = createHash("sha256");
  try {
    for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  return hash.digest("hex");
}

function quote(text: string): string {
  return JSON.stringify(text.length > 120 ? `${text.slice(0, 120)}…` : text);
}

/** Why a run does not show that the adapter served as `name` passed every gate, or undefined when it does. */
export function gateProblem(run: EvalRun, name: string): string | undefined {
  if (run.status !== EvalRunStatus.SUCCEEDED || run.report === undefined) return `eval run ${run.id} is ${EvalRunStatus[run.status]}, not SUCCEEDED`;
  if (!run.adapters.includes(name)) return `eval run ${run.id} did not evaluate adapter ${name}`;
  const gates = run.report.gates.filter((g) => g.model === name);
  if (gates.length === 0) return `eval run ${run.id} checked no gate for adapter ${name}`;
  const failing = gates.filter((g) => !g.passed);
  if (failing.length > 0) return `adapter ${name} failed ${failing.map((g) => `${g.name} (${g.rule}: ${g.value.toFixed(3)})`).join(", ")} in eval run ${run.id}`;
  return undefined;
}
