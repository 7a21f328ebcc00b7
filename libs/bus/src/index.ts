export { busOptionsFromConfig, connectBus } from "./bus.js";
export { coalesceFlushes, type FlushStats } from "./coalesce-flushes.js";
export { skipSettledRequestErrors } from "./settled-requests.js";
export type { Bus, BusContext, ConnectBusOptions, NatsConfig, NatsCredentials, OnReconnect } from "./bus.js";
export { EVENTS_STREAM, EVENTS_SUBJECTS, ensureEventsStream, ensureStream, ensureWorkQueueStream } from "./streams.js";
export type { EventsStreamOptions, StreamTarget, WorkQueueStreamOptions } from "./streams.js";
export { DEFAULT_STORE_DEFAULTS, STORE_VARIABLES, StoreFullError, storeFullError } from "./store-limits.js";
export type { StoreDefaults, StoreLabel } from "./store-limits.js";
export {
  assertEventSubject,
  buildEventCatalog,
  decodeMessage,
  eventCatalog,
  eventFilterSubject,
  eventMessages,
  eventPublisher,
  EVENTS_PACKAGE,
  eventSubject,
  MSG_ID_HEADER,
  publishEvent,
  publishEventTo,
  subscribeEvents,
  TYPE_HEADER,
  VERB_FIELD,
} from "./events.js";
export type { EventCatalogEntry, EventContext, EventSubscription, EventVerb, PublishEvent, PublishOptions, PublishResult, SubscribeOptions } from "./events.js";
export { defaultRetryDelayMs, ensureDurableConsumer } from "./consumers.js";
export { coveringFilter, followEvents, onEvent, subjectMatches } from "./follow.js";
export type { EventFollower, FollowedEvent, FollowedKind, FollowOptions, OnEventOptions } from "./follow.js";
export { openWorkQueue, workQueueNames } from "./work-queue.js";
export type { Job, TakeOptions, WorkQueue, WorkQueueOptions } from "./work-queue.js";
export { kvBucketMessages, openKv, RevisionConflictError } from "./kv.js";
export { KvCache } from "./kv-cache.js";
export type { KvChange, KvOptions, KvPage, KvStep, KvValue, KvWatch, TypedKv } from "./kv.js";
export { openArtifactStore, readArtifactContent, storeArtifactContent } from "./object-store.js";
export type { ArtifactInfo, ArtifactPutOptions, ArtifactSource, ArtifactStore, ArtifactStoreOptions } from "./object-store.js";
export { isResourceId, isTransientBusError, OwnershipLostError, ResourceExistsError, ResourceStore, retryTransient, TERMINAL_HEADER } from "./resource.js";
export type { InFlightAtReconnect } from "./resource.js";
export { LeasedWorkRunner, WorkCancelledError, type LeasedWork, type LeasedWorkOptions } from "./leased-work.js";
export type { AppendStep, CatalogEvent, Fence, HistoryEvent, Resource, ResourceChange, ResourceKind, ResourceMeta, ResourceStoreOptions, WatchOptions } from "./resource.js";
