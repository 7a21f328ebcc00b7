import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type Bus, type ResourceKind, ResourceStore, type ResourceStoreOptions } from "@ragtune/bus";
import { type EvalRun, type EvalRunEvent, EvalRunEventSchema, EvalRunSchema, EvalRunStatus } from "@ragtune/proto";

/** The event part of an EvalRunEvent (status change, progress, warning). */
export type RunEventDetail = EvalRunEvent["event"];

export function isFinished(status: EvalRunStatus): boolean {
  return status === EvalRunStatus.SUCCEEDED || status === EvalRunStatus.FAILED || status === EvalRunStatus.CANCELLED;
}

export function statusName(status: EvalRunStatus): string {
  return (EvalRunStatus[status] ?? String(status)).toLowerCase();
}

/** An eval run as a resource of the shared history (libs/bus): state `EvalRun`, history `EvalRunEvent`. */
export const evalRunKind: ResourceKind<typeof EvalRunSchema, typeof EvalRunEventSchema, RunEventDetail> = {
  kind: "eval-run",
  stateSchema: EvalRunSchema,
  eventSchema: EvalRunEventSchema,
  stampEvent: (detail, { id, sequence, timeMs }) => ({ sequence, evalRunId: id, time: timestampFromMs(timeMs), event: detail }),
  sequenceOf: (e) => e.sequence,
  isTerminal: (r) => isFinished(r.status),
};

export type RunStore = ResourceStore<typeof EvalRunSchema, typeof EvalRunEventSchema, RunEventDetail>;

export function openRunStore(bus: Bus, prefix: string, options: ResourceStoreOptions = {}): Promise<RunStore> {
  return ResourceStore.open(bus, evalRunKind, {
    ...options,
    bucket: `${prefix}-runs`,
    stream: `${prefix.toUpperCase().replace(/-/g, "_")}_RUN_HISTORY`,
    subjectPrefix: `${prefix}.run-history`,
  });
}

export function statusChanged(status: EvalRunStatus, failure?: EvalRun["failure"]): RunEventDetail {
  return { case: "statusChanged", value: { $typeName: "ragtune.eval.v1.EvalRunStatusChange", status, ...(failure === undefined ? {} : { failure }) } } as RunEventDetail;
}

export function warning(message: string): RunEventDetail {
  return { case: "warning", value: { $typeName: "ragtune.eval.v1.EvalRunWarning", message } } as RunEventDetail;
}

export function progress(done: number, total: number, failed: number): RunEventDetail {
  return { case: "progress", value: { $typeName: "ragtune.eval.v1.EvalRunProgress", answersDone: done, answersTotal: total, answersFailed: failed } } as RunEventDetail;
}

export type { EvalRun };
