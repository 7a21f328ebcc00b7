import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type Bus, type ResourceKind, ResourceStore, type ResourceStoreOptions } from "@ragtune/bus";
import { DatasetVersionEventSchema, DatasetVersionSchema, DatasetVersionStatus, type DatasetVersion, type DatasetVersionEvent } from "@ragtune/proto";

/** The event part of a DatasetVersionEvent (status change, progress, warning). */
export type VersionEventDetail = DatasetVersionEvent["event"];

export function isFinished(status: DatasetVersionStatus): boolean {
  return status === DatasetVersionStatus.READY || status === DatasetVersionStatus.FAILED || status === DatasetVersionStatus.CANCELLED;
}

/** A dataset version as a resource of the shared history (libs/bus): state `DatasetVersion`, history `DatasetVersionEvent`. */
export const datasetVersionKind: ResourceKind<typeof DatasetVersionSchema, typeof DatasetVersionEventSchema, VersionEventDetail> = {
  kind: "dataset-version",
  stateSchema: DatasetVersionSchema,
  eventSchema: DatasetVersionEventSchema,
  stampEvent: (detail, { id, sequence, timeMs }) => ({ sequence, datasetVersionId: id, time: timestampFromMs(timeMs), event: detail }),
  sequenceOf: (e) => e.sequence,
  isTerminal: (v) => isFinished(v.status),
};

export type VersionStore = ResourceStore<typeof DatasetVersionSchema, typeof DatasetVersionEventSchema, VersionEventDetail>;

export function openVersionStore(bus: Bus, prefix: string, options: ResourceStoreOptions = {}): Promise<VersionStore> {
  return ResourceStore.open(bus, datasetVersionKind, {
    ...options,
    bucket: `${prefix}-versions`,
    stream: `${prefix.toUpperCase().replace(/-/g, "_")}_VERSION_HISTORY`,
    subjectPrefix: `${prefix}.version-history`,
  });
}

export type { DatasetVersion };
