import { create, toJsonString } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { type ArtifactStore, type Fence, type LeasedWork, LeasedWorkRunner, OwnershipLostError, WorkCancelledError } from "@ragtune/bus";
import { createLlmClient, isLlmError, type LlmClient, type LlmConfig, type ModelInfo } from "@ragtune/llm";
import type { Logger } from "@ragtune/logger";
import {
  type DatasetService,
  EvalGatePassedSchema,
  EvalItemResultSchema,
  EvalPromptFormat,
  type EvalReport,
  EvalReportSchema,
  EvalRunCompletedSchema,
  type EvalRun,
  type EvalRunEventSchema,
  type EvalRunSchema,
  EvalRunStatus,
  type Failure,
  FailureKind,
  FailureSchema,
} from "@ragtune/proto";
import { type EvalItem, EvalSourceError, loadDatasetTestSplit, parseEvalFile, sampleItems } from "./eval-items.js";
import { decidedVerdict, judgeSampled, type JudgeVerdict } from "./judge.js";
import { answerItems } from "./answering.js";
import { readArtifact, storeArtifact } from "./artifact-io.js";
import { describeSuccessRule, type SuccessRule } from "./metrics.js";
import { renderMarkdown, type GateConfig, type ScoredItem } from "./report.js";
import { buildReportOffThread } from "./report-thread.js";
import { isFinished, progress, type RunEventDetail, type RunStore, statusChanged, warning } from "./run-store.js";

export interface RunExecutorDeps {
  runs: RunStore;
  artifacts: ArtifactStore;
  /** The dataset service's client; without it, runs over a dataset version fail. */
  dataset?: Client<typeof DatasetService>;
  /** Client settings for every endpoint a run names (key, timeout, retries, guided-JSON fields). */
  llm: Pick<LlmConfig, "LLM_API_KEY" | "LLM_TIMEOUT" | "LLM_MAX_RETRIES" | "LLM_GUIDED_JSON_FIELDS">;
  gates: GateConfig;
  successRule: SuccessRule;
  logger: Logger;
  /** How long a claim on a run lasts without renewal (EVAL_RUN_LEASE). */
  leaseMs: number;
  /** Test hook: called after each answer is stored in memory (a test stops a replica mid-run with it). */
  onAnswer?: (runId: string, done: number) => void | Promise<void>;
}

/** A failure a user can act on (bad input, endpoint or model), not a system fault. */
class UserFailure extends Error {
  constructor(
    readonly reason: string,
    message: string,
    readonly field = "",
  ) {
    super(message);
  }
}

/** Answers updated in the run state (and a progress event) at most this often. */
const PROGRESS_EVERY_MS = 1_000;

/** The stored JSON report: the report message and every item's results, as protobuf JSON. */
export interface StoredReport {
  report: unknown;
  items: unknown[];
}

/**
 * Runs eval runs in this process, one at a time: claims a run (a lease, renewed while it runs, so a run abandoned by
 * a killed replica is taken over by another, which starts it again), loads the items, checks the endpoint and the
 * models (GET /v1/models: an unreachable endpoint or an unknown model fails the run at once), answers every item with
 * every model at the run's concurrency (a failed request is recorded on its item, and the run goes on), asks the judge
 * when one is configured, scores, and stores the report (JSON + Markdown) with the run: SUCCEEDED, announced as
 * ragtune.eval.run.completed, and ragtune.eval.gate.passed when every promotion gate passed.
 */
export class RunExecutor {
  private readonly runner: LeasedWorkRunner<typeof EvalRunSchema, typeof EvalRunEventSchema, RunEventDetail>;

  constructor(private readonly deps: RunExecutorDeps) {
    this.runner = new LeasedWorkRunner({
      store: deps.runs,
      what: "eval run",
      idField: "evalRunId",
      logger: deps.logger,
      leaseMs: deps.leaseMs,
      isOpen: (run) => !isFinished(run.status),
      isCancelled: (run) => run.status === EvalRunStatus.CANCELLED,
      claimChange: (run, previous, reason) => {
        const events: { body: RunEventDetail }[] = [];
        if (run.status === EvalRunStatus.QUEUED) {
          run.status = EvalRunStatus.RUNNING;
          run.startedAt = timestampNow();
          events.push({ body: statusChanged(EvalRunStatus.RUNNING) });
        } else if (previous.epoch > 0) {
          events.push({ body: warning(`run restarted from the first item: ${reason}`) });
        }
        run.answersDone = 0;
        run.answersFailed = 0;
        return { state: run, events };
      },
      work: (claimed) => this.execute(claimed),
    });
  }

  /** This replica's name in claims. */
  get owner(): string {
    return this.runner.owner;
  }

  submit(id: string): void {
    this.runner.submit(id);
  }

  /** Queues every unfinished run nobody holds, now and then every half lease. Returns the IDs queued now. */
  resume(): Promise<string[]> {
    return this.runner.resume();
  }

  /** Stops the running run (it starts again on the next start, here or on another replica) and waits for the loop. */
  close(): Promise<void> {
    return this.runner.close();
  }

  private async execute({ id, resource, fence, signal, log }: LeasedWork<typeof EvalRunSchema>): Promise<void> {
    const { runs } = this.deps;
    let run = resource.state;
    const clients: LlmClient[] = [];
    try {
      const { items, collection } = await this.loadItems(run, signal);
      const endpoint = this.client(run.endpointUrl, run.concurrency, signal);
      clients.push(endpoint);
      const baseModel = await this.checkModels(endpoint, run.endpointUrl, run.baseModel, run.adapters, "base_model");
      let judge: LlmClient | undefined;
      if (run.judge !== undefined && run.judge.model !== "") {
        const url = run.judge.endpointUrl || run.endpointUrl;
        judge = url === run.endpointUrl ? endpoint : this.client(url, run.concurrency, signal);
        if (judge !== endpoint) clients.push(judge);
        await this.checkModels(judge, url, run.judge.model, [], "judge.model");
      }
      const models = [baseModel, ...run.adapters];
      run = (
        await runs.modify(
          id,
          (r) => {
            if (r.status === EvalRunStatus.CANCELLED) throw new WorkCancelledError();
            r.baseModel = baseModel;
            if (r.collection === "") r.collection = collection;
            r.items = items.length;
            r.answersTotal = items.length * models.length;
            return { state: r, events: [{ body: progress(0, r.answersTotal, 0) }] };
          },
          { fence },
        )
      ).state;
      log.info({ items: items.length, models, concurrency: run.concurrency, endpoint: run.endpointUrl }, "eval run answering");
      const scored = await this.answerAll(id, fence, run, items, models, endpoint, signal, log);
      if (judge !== undefined) await this.judgeAll(id, fence, run.judge!, scored, judge, run.concurrency, signal, log);
      await this.finish(id, fence, run, scored, baseModel);
      log.info("eval run succeeded");
    } catch (err) {
      if (err instanceof OwnershipLostError || this.runner.stopped) throw err;
      if (err instanceof WorkCancelledError || signal.reason instanceof WorkCancelledError) {
        await runs.release(id, fence).catch(() => {});
        log.info("eval run cancelled");
        return;
      }
      const failure =
        err instanceof UserFailure
          ? create(FailureSchema, { kind: FailureKind.USER_ERROR, reason: err.reason, message: err.message, field: err.field })
          : err instanceof EvalSourceError
            ? create(FailureSchema, { kind: FailureKind.USER_ERROR, reason: `SOURCE_${err.reason}`, message: err.message, field: err.field })
            : create(FailureSchema, { kind: FailureKind.SYSTEM_ERROR, reason: "INTERNAL", message: `the run failed: ${(err as Error).message}` });
      if (!(err instanceof UserFailure || err instanceof EvalSourceError)) log.error({ err }, "eval run failed");
      else log.warn({ reason: failure.reason }, failure.message);
      await this.fail(id, fence, failure);
    } finally {
      for (const c of clients) c.close();
    }
  }

  private client(baseUrl: string, concurrency: number, signal: AbortSignal): LlmClient {
    const { llm } = this.deps;
    return createLlmClient({
      baseUrl,
      ...(llm.LLM_API_KEY === undefined ? {} : { apiKey: llm.LLM_API_KEY }),
      concurrency,
      timeoutMs: llm.LLM_TIMEOUT,
      maxRetries: llm.LLM_MAX_RETRIES,
      guidedJsonFields: llm.LLM_GUIDED_JSON_FIELDS,
      logger: this.deps.logger,
      signal,
    });
  }

  /** The run's items (sampled) and the collection they come from (a dataset version's; else the run's own). */
  private async loadItems(run: EvalRun, signal: AbortSignal): Promise<{ items: EvalItem[]; collection: string }> {
    let items: EvalItem[];
    let collection = run.collection;
    if (run.datasetVersionId !== "") {
      if (this.deps.dataset === undefined) {
        throw new UserFailure("DATASET_SERVICE_NOT_CONFIGURED", "this eval service has no EVAL_DATASET_URL, so it cannot read dataset versions; upload an eval file instead", "dataset_version_id");
      }
      ({ items, collection } = await loadDatasetTestSplit(this.deps.dataset, run.datasetVersionId, signal));
    } else {
      const ref = run.evalFile;
      if (ref === undefined) throw new Error(`run ${run.id} has neither a dataset version nor an eval file`);
      items = parseEvalFile(await readArtifact(this.deps.artifacts, ref.sha256, `eval file of run ${run.id}`));
    }
    return { items: sampleItems(items, run.maxItems, run.seed), collection };
  }

  /**
   * GET /v1/models: the endpoint answers and serves every model the run names. Returns the base model (the one the
   * run names, else the only base model listed). Fails fast with a message that says what to fix.
   */
  private async checkModels(client: LlmClient, url: string, base: string, adapters: readonly string[], field: string): Promise<string> {
    let served: ModelInfo[];
    try {
      served = (await client.models({ maxRetries: 1 })).models;
    } catch (err) {
      if (!isLlmError(err) || err.kind === "cancelled") throw err;
      const hint =
        err.kind === "unauthorized"
          ? "the endpoint refused the key: set LLM_API_KEY to its --api-key"
          : err.kind === "connection" || err.kind === "timeout"
            ? "check endpoint_url (…/v1 of a running vLLM or local model server)"
            : "is it an OpenAI-compatible server (vLLM or the local model server)?";
      throw new UserFailure(err.kind === "unauthorized" ? "ENDPOINT_UNAUTHORIZED" : "ENDPOINT_UNREACHABLE", `the endpoint ${url} did not list its models (${err.message}); ${hint}`, "endpoint_url");
    }
    const ids = served.map((m) => m.id);
    let baseModel = base;
    if (baseModel === "") {
      const bases = served.filter((m) => m.parent === undefined || m.parent === "" || m.parent === null).map((m) => m.id);
      if (bases.length !== 1) {
        throw new UserFailure("BASE_MODEL_REQUIRED", `name base_model: the endpoint ${url} serves ${bases.length === 0 ? "no base model" : `several base models (${bases.join(", ")})`}`, field);
      }
      baseModel = bases[0]!;
    }
    for (const [name, what] of [[baseModel, field], ...adapters.map((a) => [a, "adapters"] as const)] as const) {
      if (!ids.includes(name)) {
        throw new UserFailure("UNKNOWN_MODEL", `the endpoint ${url} does not serve the model "${name}"; it serves: ${ids.join(", ") || "nothing"}`, what);
      }
    }
    return baseModel;
  }

  private async answerAll(
    id: string,
    fence: Fence,
    run: EvalRun,
    items: readonly EvalItem[],
    models: readonly string[],
    endpoint: LlmClient,
    signal: AbortSignal,
    log: Logger,
  ): Promise<ScoredItem[]> {
    const total = items.length * models.length;
    const warnedKinds = new Set<string>();
    let lastWrite = Date.now();
    // Run writes happen one after another, in the order the answers report them; a failed write stops the loop.
    let writes: Promise<unknown> = Promise.resolve();
    let writeError: unknown;
    const write = (done: number, failed: number, events: RunEventDetail[]) => {
      writes = writes
        .then(() =>
          this.deps.runs.modify(
            id,
            (r) => {
              if (r.status === EvalRunStatus.CANCELLED) throw new WorkCancelledError();
              r.answersDone = done;
              r.answersFailed = failed;
              return { state: r, events: events.map((body) => ({ body })) };
            },
            { fence },
          ),
        )
        .catch((err: unknown) => {
          writeError ??= err;
        });
    };
    const scored = await answerItems({
      endpoint,
      items,
      models,
      concurrency: run.concurrency,
      chat: run.promptFormat === EvalPromptFormat.CHAT,
      sampling: { temperature: run.sampling?.temperature ?? 0, maxTokens: run.sampling?.maxTokens ?? 200 },
      successRule: this.deps.successRule,
      signal,
      onAnswer: async (answer, item, { done, failed }) => {
        if (writeError !== undefined) throw writeError;
        const error = answer.outcome.error;
        if (error !== undefined && !warnedKinds.has(error.kind)) {
          warnedKinds.add(error.kind);
          const message = `item ${item.id}, model ${answer.model}: ${error.kind}: ${error.message} (further ${error.kind} failures are counted in the report)`;
          log.warn(message);
          write(done, failed, [warning(message)]);
        }
        await this.deps.onAnswer?.(id, done);
        if (Date.now() - lastWrite >= PROGRESS_EVERY_MS && done < total) {
          lastWrite = Date.now();
          write(done, failed, [progress(done, total, failed)]);
        }
      },
    });
    const failed = scored.reduce((n, s) => n + s.answers.filter((a) => a.outcome.error !== undefined).length, 0);
    write(total, failed, [progress(total, total, failed)]);
    await writes;
    if (writeError !== undefined) throw writeError;
    return scored;
  }

  private async judgeAll(
    id: string,
    fence: Fence,
    settings: NonNullable<EvalRun["judge"]>,
    scored: ScoredItem[],
    judge: LlmClient,
    concurrency: number,
    signal: AbortSignal,
    log: Logger,
  ): Promise<void> {
    const model = settings.model;
    const samples = Math.min(9, Math.max(1, settings.samples ?? 1));
    const tasks = scored.flatMap((s) =>
      s.answers
        .filter((a) => a.outcome.error === undefined)
        .filter((a) => {
          if (!settings.onlyUndecided) return true;
          const decided = decidedVerdict({ ...s.item, answer: a.outcome.text });
          if (decided === undefined) return true;
          a.judge = decided;
          a.judgeDecided = true;
          return false;
        })
        .map((a) => ({ item: s.item, answer: a })),
    );
    let next = 0;
    let failures = 0;
    let firstFailure = "";
    const worker = async () => {
      for (;;) {
        if (signal.aborted) throw signal.reason;
        const task = tasks[next++];
        if (task === undefined) return;
        let verdict: JudgeVerdict | undefined;
        try {
          const sampled = await judgeSampled(judge, model, { ...task.item, answer: task.answer.outcome.text }, samples, signal);
          verdict = sampled.verdict;
          if (samples > 1) task.answer.judgeAgreement = sampled.agreement;
        } catch (err) {
          if (signal.aborted || !isLlmError(err)) throw signal.aborted ? signal.reason : err;
          failures++;
          firstFailure ||= `${err.kind}: ${err.message}`;
        }
        if (verdict !== undefined) task.answer.judge = verdict;
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(1, tasks.length)) }, worker));
    if (failures > 0) {
      const message = `the judge ${model} graded ${tasks.length - failures} of ${tasks.length} answers; the first failure: ${firstFailure}`;
      log.warn(message);
      await this.deps.runs.modify(id, (r) => ({ state: r, events: [{ body: warning(message) }] }), { fence });
    }
  }

  private async finish(id: string, fence: Fence, run: EvalRun, scored: ScoredItem[], baseModel: string): Promise<void> {
    const { artifacts } = this.deps;
    const { report, results } = await buildReportOffThread({
      runId: id,
      baseModel,
      adapters: run.adapters,
      items: scored,
      gates: this.deps.gates,
      seed: run.seed,
      successRule: describeSuccessRule(this.deps.successRule),
    });
    const source = run.datasetVersionId !== "" ? `test split of dataset version ${run.datasetVersionId}` : `eval file ${run.evalFileName || run.evalFile?.sha256 || ""}`;
    const markdown = renderMarkdown(report, { endpointUrl: run.endpointUrl, source });
    const json = `{"report":${toJsonString(EvalReportSchema, report)},"items":[${results.map((r) => toJsonString(EvalItemResultSchema, r)).join(",")}]}\n`;
    report.json = await storeArtifact(artifacts, json, "application/json");
    report.markdown = await storeArtifact(artifacts, markdown, "text/markdown");
    const finishedAt = timestampNow();
    await this.deps.runs.release(id, fence, (r) => {
      if (isFinished(r.status)) return { state: r };
      r.status = EvalRunStatus.SUCCEEDED;
      r.report = report;
      r.finishedAt = finishedAt;
      const announce = [
        completedEvent(r, EvalRunStatus.SUCCEEDED, finishedAt, { report }),
        ...(report.gatesPassed
          ? [
              {
                schema: EvalGatePassedSchema,
                msgId: `${id}:gate-passed`,
                value: {
                  eventId: `${id}:gate-passed`,
                  occurredAt: finishedAt,
                  evalRunId: id,
                  collection: r.collection,
                  datasetVersionId: r.datasetVersionId,
                  baseModel,
                  adapters: r.adapters,
                  gates: report.gates,
                },
              },
            ]
          : []),
      ];
      return { state: r, events: [{ body: statusChanged(EvalRunStatus.SUCCEEDED), announce }] };
    });
  }

  private async fail(id: string, fence: Fence, failure: Failure): Promise<void> {
    const finishedAt = timestampNow();
    await this.deps.runs.release(id, fence, (r) => {
      if (isFinished(r.status)) return { state: r };
      r.status = EvalRunStatus.FAILED;
      r.failure = failure;
      r.finishedAt = finishedAt;
      return {
        state: r,
        events: [
          {
            body: statusChanged(EvalRunStatus.FAILED, failure),
            announce: [completedEvent(r, EvalRunStatus.FAILED, finishedAt, { failure })],
          },
        ],
      };
    });
  }
}

/** The ragtune.eval.run.completed announcement of a run that ended: with its report, or its failure, or cancelled. */
export function completedEvent(run: EvalRun, status: EvalRunStatus, occurredAt: ReturnType<typeof timestampNow>, extra: { failure?: Failure; report?: EvalReport } = {}) {
  return {
    schema: EvalRunCompletedSchema,
    msgId: `${run.id}:completed`,
    value: {
      eventId: `${run.id}:completed`,
      occurredAt,
      evalRunId: run.id,
      collection: run.collection,
      datasetVersionId: run.datasetVersionId,
      baseModel: run.baseModel,
      adapters: run.adapters,
      status,
      ...extra,
    },
  };
}
