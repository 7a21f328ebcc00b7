import { createHash, randomBytes } from "node:crypto";
import { access, realpath, stat } from "node:fs/promises";
import { join, resolve, sep } from "node:path";
import { clone, create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { ArtifactStore, Bus } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  AdapterFileKind,
  type CreateJobRequest,
  DatasetExportFilesSchema,
  type Hyperparameters,
  HyperparametersSchema,
  type Job,
  JobSchema,
  JobStatus,
  PageResponseSchema,
  PromptTemplate,
  type TrainerService,
} from "@ragtune/proto";
import { failedPrecondition, invalidArgument, notFound, paginate } from "@ragtune/rpc";
import { invalidField, resolveHyperparameters } from "./hyperparameters.js";
import type { JobQueue } from "./job-runner.js";
import { IllegalTransitionError, isTerminal, statusName } from "./job-status.js";
import { DatasetVersionCatalog } from "./dataset-versions.js";
import { type JobStore, isKey, parseCheckpointId } from "./job-store.js";

export interface TrainerServiceDeps {
  bus: Bus;
  store: JobStore;
  queue: JobQueue;
  artifacts: ArtifactStore;
  /** The dataset versions announced as built (dataset_version_id). */
  datasets: Pick<DatasetVersionCatalog, "get">;
  /** Dataset export files must lie under this folder. */
  dataRoot: string;
  /** Base model folders must lie under this folder. */
  modelRoot: string;
  logger: Logger;
}

const DOWNLOAD_PIECE_BYTES = 1024 * 1024;

async function isInside(root: string, path: string): Promise<boolean> {
  const realRoot = await realpath(root).catch(() => resolve(root));
  return path === realRoot || path.startsWith(realRoot + sep);
}

/** Checks a base model reference: an existing folder under the model root that holds config.json. */
async function checkBaseModel(baseModel: string, modelRoot: string): Promise<string> {
  if (baseModel.trim() === "") throw invalidArgument("base_model", "is required: give the path of a Hugging Face model folder");
  let path = baseModel;
  if (baseModel.startsWith("file://")) path = new URL(baseModel).pathname;
  else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(baseModel)) {
    throw invalidArgument("base_model", `"${baseModel}" is not a local path; models are never downloaded, give a folder on the trainer's file system`);
  }
  let real: string;
  try {
    real = await realpath(resolve(path));
  } catch {
    throw invalidArgument("base_model", `folder ${path} does not exist`);
  }
  if (!(await isInside(modelRoot, real))) throw invalidArgument("base_model", `${path} is outside the allowed model root ${modelRoot} (TRAINER_MODEL_ROOT)`);
  if (!(await stat(real)).isDirectory()) throw invalidArgument("base_model", `${path} is not a folder`);
  try {
    await access(join(real, "config.json"));
  } catch {
    throw invalidArgument("base_model", `${path} has no config.json; it must be a Hugging Face model folder`);
  }
  return real;
}

async function checkDataFile(field: string, path: string, dataRoot: string): Promise<string> {
  let real: string;
  try {
    real = await realpath(resolve(path));
  } catch {
    throw invalidArgument(field, `file ${path} does not exist`);
  }
  if (!(await isInside(dataRoot, real))) throw invalidArgument(field, `${path} is outside the allowed data root ${dataRoot} (TRAINER_DATA_ROOT)`);
  if (!(await stat(real)).isFile()) throw invalidArgument(field, `${path} is not a file`);
  return real;
}

function newJobId(clientRequestId: string): string {
  if (clientRequestId !== "") return `job-${createHash("sha256").update(clientRequestId).digest("hex").slice(0, 20)}`;
  return `job-${randomBytes(10).toString("hex")}`;
}

/** The TrainerService RPC handlers. */
export function createTrainerService(deps: TrainerServiceDeps): ServiceImpl<typeof TrainerService> {
  const { store, queue } = deps;

  async function getJob(jobId: string): Promise<Job> {
    if (jobId === "") throw invalidArgument("job_id", "is required");
    const job = isKey(jobId) ? await store.get(jobId) : null;
    if (job === null) throw notFound("training job", jobId);
    return job;
  }

  /**
   * The succeeded job whose adapter a warm start continues: on the same base model, with PEFT files. Its rank,
   * alpha and target modules fill the request's unset ones; a different one is refused (the weights would not fit).
   */
  async function initAdapterSource(req: CreateJobRequest, baseModel: string): Promise<{ jobId: string; hyperparameters: Hyperparameters }> {
    const id = req.initAdapterJobId;
    const from = isKey(id) ? await store.get(id) : null;
    if (from === null) throw invalidArgument("init_adapter_job_id", `job "${id}" not found; give the ID of a succeeded job whose adapter to train on from`);
    if (from.status !== JobStatus.SUCCEEDED || from.adapter === undefined) {
      throw failedPrecondition(`job ${from.id} is ${statusName(from.status)} and has no adapter to start from; a warm start needs a succeeded job`);
    }
    if (!from.adapter.files.some((f) => f.kind === AdapterFileKind.PEFT_WEIGHTS) || !from.adapter.files.some((f) => f.kind === AdapterFileKind.PEFT_CONFIG)) {
      throw failedPrecondition(`the adapter of job ${from.id} has no PEFT files (adapter_config.json, adapter_model.safetensors) to start from`);
    }
    if (from.baseModel !== baseModel) {
      throw failedPrecondition(`the adapter of job ${from.id} was trained on ${from.baseModel}, not ${baseModel}; a warm start needs the same base model`);
    }
    const source = from.hyperparameters!;
    const hp = req.hyperparameters !== undefined ? clone(HyperparametersSchema, req.hyperparameters) : create(HyperparametersSchema);
    const differs = (field: string, mine: string, theirs: string) =>
      invalidField(`hyperparameters.${field}`, `is ${mine}, but the adapter of job ${from.id} has ${theirs}; a warm start keeps rank, alpha and target modules (leave them unset to take the adapter's)`);
    if (hp.rank !== undefined && hp.rank !== source.rank) throw differs("rank", String(hp.rank), String(source.rank));
    if (hp.alpha !== undefined && hp.alpha !== source.alpha) throw differs("alpha", String(hp.alpha), String(source.alpha));
    if (hp.targetModules.length > 0 && [...hp.targetModules].sort().join(",") !== [...source.targetModules].sort().join(",")) {
      throw differs("target_modules", hp.targetModules.join(", "), source.targetModules.join(", "));
    }
    hp.rank = source.rank;
    hp.alpha = source.alpha;
    hp.targetModules = [...source.targetModules];
    return { jobId: from.id, hyperparameters: hp };
  }

  async function buildJob(req: CreateJobRequest): Promise<Job> {
    let hyperparameters = resolveHyperparameters(req.hyperparameters);
    const baseModel = await checkBaseModel(req.baseModel, deps.modelRoot);
    const warm = req.initAdapterJobId !== "" ? await initAdapterSource(req, baseModel) : undefined;
    if (warm !== undefined) hyperparameters = resolveHyperparameters(warm.hyperparameters);
    let dataset: Job["dataset"];
    switch (req.dataset.case) {
      case "datasetVersionId": {
        const id = req.dataset.value;
        if (id === "") throw invalidArgument("dataset_version_id", "must not be empty");
        const version = await deps.datasets.get(id);
        if (version === null) {
          throw failedPrecondition(
            `dataset version "${id}" is unknown to the trainer: the dataset service has not announced it as built; build it with BuildDatasetVersion and wait until it is READY, or pass dataset_files`,
          );
        }
        const unusable = DatasetVersionCatalog.unusable(version);
        if (unusable !== undefined) throw failedPrecondition(unusable);
        dataset = { case: "datasetVersionId", value: id };
        break;
      }
      case "datasetFiles": {
        const files = req.dataset.value;
        if (files.trainPath === "") throw invalidArgument("dataset_files.train_path", "is required");
        const trainPath = await checkDataFile("dataset_files.train_path", files.trainPath, deps.dataRoot);
        const valPath = files.valPath === "" ? "" : await checkDataFile("dataset_files.val_path", files.valPath, deps.dataRoot);
        dataset = { case: "datasetFiles", value: create(DatasetExportFilesSchema, { trainPath, valPath }) };
        break;
      }
      default:
        throw invalidArgument("dataset", "is required: set dataset_version_id or dataset_files");
    }
    const now = timestampFromDate(new Date());
    return create(JobSchema, {
      id: newJobId(req.clientRequestId),
      displayName: req.displayName,
      status: JobStatus.QUEUED,
      baseModel,
      dataset,
      hyperparameters,
      promptTemplate: req.promptTemplate === PromptTemplate.UNSPECIFIED ? PromptTemplate.UNSPECIFIED : req.promptTemplate,
      collection: req.collection,
      initAdapterJobId: warm?.jobId ?? "",
      createdAt: now,
      updatedAt: now,
    });
  }

  return {
    async createJob(req) {
      const job = await buildJob(req);
      const { job: stored, created } = await store.create(job);
      // Enqueue also for a retried create: the message ID makes a second enqueue a no-op.
      await queue.enqueue({ jobId: stored.id }, { msgId: `${stored.id}:attempt-0` });
      deps.logger.info({ jobId: stored.id, created }, created ? "job created" : "job create retried; returning the existing job");
      return { job: stored };
    },

    async getJob(req) {
      return { job: await getJob(req.jobId) };
    },

    async listJobs(req) {
      for (const [i, s] of req.statuses.entries()) {
        if (JobStatus[s] === undefined || s === JobStatus.UNSPECIFIED) throw invalidArgument(`statuses[${i}]`, `unknown job status ${s}`);
      }
      const wanted = new Set(req.statuses);
      const jobs = (await store.list())
        .filter((j) => wanted.size === 0 || wanted.has(j.status))
        .sort((a, b) => {
          const ta = a.createdAt ? timestampDate(a.createdAt).getTime() : 0;
          const tb = b.createdAt ? timestampDate(b.createdAt).getTime() : 0;
          return tb - ta || b.id.localeCompare(a.id);
        });
      const page = paginate(jobs, req.page, `jobs:${[...wanted].sort().join(",")}`);
      return { jobs: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async cancelJob(req) {
      const job = await getJob(req.jobId);
      if (isTerminal(job.status)) {
        throw failedPrecondition(`job ${job.id} has already finished (${statusName(job.status)}); only queued, validating or running jobs can be cancelled`);
      }
      if (job.status === JobStatus.CANCEL_REQUESTED) return { job };
      try {
        return { job: await store.transition(job.id, { type: "request_cancel" }) };
      } catch (err) {
        if (err instanceof IllegalTransitionError) {
          const now = await getJob(req.jobId);
          throw failedPrecondition(`job ${now.id} has already finished (${statusName(now.status)}); it cannot be cancelled`);
        }
        throw err;
      }
    },

    async *watchJob(req, ctx) {
      const job = await getJob(req.jobId);
      for await (const event of store.watch(job.id, { fromSequence: req.fromSequence, signal: ctx.signal })) {
        yield { event };
      }
    },

    async listCheckpoints(req) {
      const job = await getJob(req.jobId);
      const page = paginate(await store.listCheckpoints(job.id), req.page, `checkpoints:${job.id}`);
      return { checkpoints: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async resumeJob(req) {
      const job = await getJob(req.jobId);
      if (job.status !== JobStatus.FAILED && job.status !== JobStatus.CANCELLED) {
        throw failedPrecondition(`job ${job.id} is ${statusName(job.status)}; only failed or cancelled jobs can be resumed`);
      }
      let checkpoint;
      if (req.checkpointId === "") {
        checkpoint = await store.latestCheckpoint(job.id);
        if (checkpoint === undefined) throw failedPrecondition(`job ${job.id} has no checkpoint to resume from; create a new job instead`);
      } else {
        const owner = parseCheckpointId(req.checkpointId);
        if (owner !== undefined && owner.jobId !== job.id) {
          const other = await store.getCheckpoint(req.checkpointId);
          if (other !== null) {
            throw invalidArgument("checkpoint_id", `checkpoint ${req.checkpointId} belongs to job ${other.jobId}, not ${job.id}; a job resumes only from its own checkpoints`);
          }
        }
        checkpoint = await store.getCheckpoint(req.checkpointId);
        if (checkpoint === null || checkpoint.jobId !== job.id) {
          const kept = (await store.listCheckpoints(job.id)).map((c) => c.id);
          throw new ConnectError(
            `checkpoint "${req.checkpointId}" of job ${job.id} not found; ${kept.length > 0 ? `its checkpoints are ${kept.join(", ")}` : "it has no checkpoints"} (each job keeps only its last TRAINER_KEEP_CHECKPOINTS checkpoints)`,
            Code.NotFound,
          );
        }
      }
      let resumed: Job;
      try {
        resumed = await store.transition(job.id, { type: "resume", checkpointId: checkpoint.id });
      } catch (err) {
        if (err instanceof IllegalTransitionError) throw failedPrecondition(err.message);
        throw err;
      }
      await queue.enqueue({ jobId: job.id }, { msgId: `${job.id}:resume-${resumed.lastSequence}` });
      return { job: resumed };
    },

    async *downloadAdapter(req) {
      const job = await getJob(req.jobId);
      if (job.status !== JobStatus.SUCCEEDED || job.adapter === undefined) {
        throw failedPrecondition(`job ${job.id} is ${statusName(job.status)} and has no adapter; adapters exist for succeeded jobs`);
      }
      if (AdapterFileKind[req.kind] === undefined) throw invalidArgument("kind", `unknown adapter file kind ${req.kind}`);
      const files = job.adapter.files.filter((f) => req.kind === AdapterFileKind.UNSPECIFIED || f.kind === req.kind);
      if (files.length === 0) throw notFound(`adapter file of job ${job.id}`, AdapterFileKind[req.kind]);
      for (const file of files) {
        const ref = file.artifact!;
        const stream = await deps.artifacts.get(ref.sha256);
        if (stream === null) throw failedPrecondition(`adapter file ${file.fileName} of job ${job.id} is missing from the object store`);
        let offset = 0n;
        let pending: Buffer[] = [];
        let pendingBytes = 0;
        const piece = () => {
          const data = Buffer.concat(pending);
          pending = [];
          pendingBytes = 0;
          const msg = { kind: file.kind, fileName: file.fileName, offset, data, totalSizeBytes: ref.sizeBytes, sha256: ref.sha256 };
          offset += BigInt(data.length);
          return msg;
        };
        for await (const chunk of stream) {
          let buf = chunk as Buffer;
          while (buf.length > 0) {
            const take = Math.min(buf.length, DOWNLOAD_PIECE_BYTES - pendingBytes);
            pending.push(buf.subarray(0, take));
            pendingBytes += take;
            buf = buf.subarray(take);
            if (pendingBytes === DOWNLOAD_PIECE_BYTES) yield piece();
          }
        }
        if (pendingBytes > 0 || offset === 0n) yield piece();
      }
    },
  };
}
