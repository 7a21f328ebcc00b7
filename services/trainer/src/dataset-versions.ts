import { join } from "node:path";
import { type ArtifactStore, type Bus, type EventSubscription, type TypedKv, retryTransient } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import { DatasetExportFormat, DatasetSplit, type DatasetSplitExport, type DatasetVersionBuilt, DatasetVersionBuiltSchema, PromptTemplate } from "@ragtune/proto";

/** The export of training rows in the Mistral template (a version also stores inference, chat and prompt/completion rows). */
function isTrainingRows(x: DatasetSplitExport): boolean {
  return x.template === PromptTemplate.MISTRAL_INSTRUCT && (x.format === DatasetExportFormat.UNSPECIFIED || x.format === DatasetExportFormat.INSTRUCT);
}

/** Local copies of a version's training exports for one attempt. */
export interface DatasetFiles {
  trainPath: string;
  /** Empty when the version has no validation rows. */
  valPath: string;
}

/**
 * The dataset versions the trainer can train on: it follows ragtune.dataset.version.built (never calling the dataset
 * service back) and keeps each announcement in its own KV bucket; a job's attempt downloads the version's train and
 * val exports from the object store the announcement names.
 */
export class DatasetVersionCatalog {
  private constructor(
    private readonly bus: Bus,
    private readonly versions: TypedKv<typeof DatasetVersionBuiltSchema>,
    private readonly subscription: EventSubscription,
    private readonly logger: Logger,
  ) {}

  static async open(bus: Bus, logger: Logger, bucket = "trainer-dataset-versions", durable = "trainer-dataset-versions"): Promise<DatasetVersionCatalog> {
    const versions = await bus.kv(bucket, DatasetVersionBuiltSchema);
    const log = logger.child({ component: "dataset-versions" });
    const subscription = await bus.subscribe({
      durable,
      schema: DatasetVersionBuiltSchema,
      handler: async ({ event }) => {
        await versions.put(event.datasetVersionId, event); // idempotent: the same announcement again is the same value
        log.info({ datasetVersionId: event.datasetVersionId, collection: event.collection }, "dataset version available for training");
      },
    });
    return new DatasetVersionCatalog(bus, versions, subscription, log);
  }

  /** The version's announcement, or null when the trainer has not heard of it (unknown, not built, or failed). */
  async get(id: string): Promise<DatasetVersionBuilt | null> {
    if (!/^[A-Za-z0-9_-]{1,128}$/.test(id)) return null;
    return (await this.versions.get(id))?.value ?? null;
  }

  /** Why a version cannot be trained on, or undefined when it can (a Mistral-instruct train export exists). */
  static unusable(version: DatasetVersionBuilt): string | undefined {
    const train = version.exports.find((x) => x.split === DatasetSplit.TRAIN && isTrainingRows(x));
    if (train?.artifact === undefined || train.rows === 0) return `dataset version ${version.datasetVersionId} has no Mistral-instruct training export`;
    return undefined;
  }

  /** Downloads the version's train and val exports into `dir` (verified against their hashes). */
  async download(id: string, dir: string): Promise<DatasetFiles> {
    const version = await this.get(id);
    if (version === null) throw new Error(`dataset version ${id} is unknown to the trainer`);
    const fetch = async (split: DatasetSplit, name: string): Promise<string> => {
      const ref = version.exports.find((x) => x.split === split && isTrainingRows(x));
      if (ref?.artifact === undefined || ref.rows === 0) return "";
      const store: ArtifactStore = await this.bus.artifacts(ref.artifact.bucket);
      const path = join(dir, name);
      // A download in flight at a NATS reconnect is aborted (its partial file removed) and retried once it has stopped.
      await retryTransient((signal) => store.getToFile(ref.artifact!.sha256, path, signal), 60_000, this.logger, `downloading the ${name} export of ${id}`, this.bus.onReconnect, "abort");
      return path;
    };
    const trainPath = await fetch(DatasetSplit.TRAIN, "train.jsonl");
    if (trainPath === "") throw new Error(`dataset version ${id} has no training export`);
    return { trainPath, valPath: await fetch(DatasetSplit.VAL, "val.jsonl") };
  }

  async close(): Promise<void> {
    await this.subscription.stop();
  }
}
