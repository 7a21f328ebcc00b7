import { stat } from "node:fs/promises";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Logger } from "@ragtune/logger";
import {
  ChunkChangeCountsSchema,
  DocumentErrorReason,
  DocumentSchema,
  DocumentStatus,
  FailureKind,
  FailureSchema,
  IngestDocumentResultSchema,
  TokenStatsSchema,
  type ArtifactRef,
  type ChunkingOptions,
  type Document,
  type IngestDocumentResult,
  type TokenStats,
} from "@ragtune/proto";
import { documentIdFor, tokenDistribution, type ParseErrorCode } from "@ragtune/text";
import type { EffectiveChunking } from "./chunking-options.js";
import { DocumentTimeoutError, DocumentWorkerError } from "./document-pool.js";
import type { DocumentStore } from "./document-store.js";
import type { DocumentWork, DocumentWorkResult } from "./document-work.js";

/** Publishes the `ragtune.ingest.document.chunked` event of a new document version. */
export type PublishChunked = (event: {
  collection: string;
  documentId: string;
  sourceName: string;
  title: string;
  contentSha256: string;
  added: string[];
  kept: string[];
  removed: string[];
  chunkSet: ArtifactRef;
  chunking: ChunkingOptions;
}) => Promise<void>;

export interface ProcessInput {
  runId: string;
  collection: string;
  sourceName: string;
  mediaType: string;
  /** Reads the raw bytes; may throw a SourceReadError. */
  read?: () => Promise<Uint8Array>;
  /** Instead of `read`: the file the document's worker reads (a server path), with the same errors and limit. */
  path?: string;
  chunking: EffectiveChunking;
  chunkingProto: ChunkingOptions;
}

export interface ProcessDeps {
  store: DocumentStore;
  /** Parses and chunks a document: a worker of the document pool (DocumentPool.run), or prepareDocument in tests. */
  prepare: (work: DocumentWork) => Promise<DocumentWorkResult>;
  publishChunked: PublishChunked;
  maxDocumentBytes: number;
  logger: Logger;
}

export interface ProcessOutput {
  result: IngestDocumentResult;
  /** Token counts of the document's chunks after this run (empty when it failed). */
  tokenCounts: number[];
  /** Bytes read (0 when nothing was read). */
  bytes: number;
}

/** A document that could not be read; carries the per-document reason. */
export class SourceReadError extends Error {
  constructor(
    readonly reason: DocumentErrorReason,
    message: string,
  ) {
    super(message);
    this.name = "SourceReadError";
  }
}

const PARSE_REASONS: Record<ParseErrorCode, DocumentErrorReason> = {
  "invalid-utf8": DocumentErrorReason.INVALID_UTF8,
  binary: DocumentErrorReason.BINARY_CONTENT,
  empty: DocumentErrorReason.EMPTY,
  "too-large": DocumentErrorReason.TOO_LARGE,
  "unsupported-media-type": DocumentErrorReason.UNSUPPORTED_MEDIA_TYPE,
  "invalid-front-matter": DocumentErrorReason.PARSE_FAILED,
  "too-deep": DocumentErrorReason.PARSE_FAILED,
};

const REASON_NAMES: Partial<Record<DocumentErrorReason, string>> = {
  [DocumentErrorReason.INVALID_UTF8]: "INVALID_UTF8",
  [DocumentErrorReason.BINARY_CONTENT]: "BINARY_CONTENT",
  [DocumentErrorReason.EMPTY]: "EMPTY",
  [DocumentErrorReason.TOO_LARGE]: "TOO_LARGE",
  [DocumentErrorReason.UNSUPPORTED_MEDIA_TYPE]: "UNSUPPORTED_MEDIA_TYPE",
  [DocumentErrorReason.PATH_OUTSIDE_ROOT]: "PATH_OUTSIDE_ROOT",
  [DocumentErrorReason.PATH_NOT_FOUND]: "PATH_NOT_FOUND",
  [DocumentErrorReason.PARSE_FAILED]: "PARSE_FAILED",
  [DocumentErrorReason.INTERNAL]: "INTERNAL",
  [DocumentErrorReason.TIMEOUT]: "TIMEOUT",
};

/** The FAILED result of a document, with a reason and a message naming the problem. */
export function failedResult(sourceName: string, documentId: string, reason: DocumentErrorReason, message: string): IngestDocumentResult {
  return create(IngestDocumentResultSchema, {
    sourceName,
    documentId,
    status: DocumentStatus.FAILED,
    errorReason: reason,
    error: create(FailureSchema, {
      kind: reason === DocumentErrorReason.INTERNAL ? FailureKind.SYSTEM_ERROR : FailureKind.USER_ERROR,
      message,
      reason: REASON_NAMES[reason] ?? "",
      field: sourceName,
    }),
  });
}

/**
 * Parses, chunks and stores one document of a run, and reports its result. The parsing and chunking run through
 * `deps.prepare` (a worker of the document pool in the service), the reads and writes here. A document whose chunk
 * set is stored unchanged (and present, with its chunks indexed) writes nothing; one whose stored chunk set or chunks
 * went missing is stored again. A failure never touches the stored version of the document. Write order (chunk set,
 * chunks, event, record, then cleanup of the old version) makes an interrupted document safe to process again.
 */
export async function processDocument(input: ProcessInput, deps: ProcessDeps): Promise<ProcessOutput> {
  const { collection, sourceName } = input;
  const documentId = documentIdFor(collection, sourceName);
  const fail = (reason: DocumentErrorReason, message: string, bytes = 0): ProcessOutput => ({
    result: failedResult(sourceName, documentId, reason, message),
    tokenCounts: [],
    bytes,
  });

  // A server path's file is read by the worker; other content here, first.
  let bytes: Uint8Array | undefined;
  if (input.path === undefined) {
    if (input.read === undefined) throw new Error(`${sourceName}: the document has neither a path nor a read function`);
    try {
      bytes = await input.read();
    } catch (err) {
      if (err instanceof SourceReadError) return fail(err.reason, err.message);
      throw err;
    }
  }
  /** Bytes of the document: as read here, as the worker read them, or (the worker stopped) the file's size now. */
  let size = bytes?.byteLength;
  const sizeOf = async (): Promise<number> => (size ??= input.path === undefined ? 0 : await stat(input.path).then((s) => s.size, () => 0));
  const failAndRecord = async (reason: DocumentErrorReason, message: string): Promise<ProcessOutput> => {
    const failed = fail(reason, message, await sizeOf());
    await recordFailure(deps.store, collection, documentId, sourceName, input, failed.bytes, failed.result);
    return failed;
  };

  const previous = await deps.store.getDocument(collection, documentId);
  const previousReady = previous !== null && previous.status === DocumentStatus.READY ? previous : null;
  // The stored chunk set of the current version: unchanged sections take their chunks instead of being tokenized
  // again, and the new chunks are diffed against it. Missing (a lost artifact): everything is chunked and stored again.
  let previousChunkSet: Uint8Array | null = null;
  if (previousReady?.chunkSet !== undefined && previousReady.chunkSet.sha256 !== "") {
    previousChunkSet = await deps.store.readChunkSetBytes(previousReady.chunkSet.sha256);
    if (previousChunkSet === null) {
      deps.logger.warn({ documentId, sourceName, chunkSet: previousReady.chunkSet.sha256 }, "stored chunk set is missing; storing the document again");
    }
  }

  let prepared: DocumentWorkResult;
  try {
    prepared = await deps.prepare({
      collection,
      sourceName,
      mediaType: input.mediaType,
      ...(input.path !== undefined ? { path: input.path } : { bytes: bytes! }),
      maxDocumentBytes: deps.maxDocumentBytes,
      chunking: input.chunking,
      ...(previousChunkSet !== null ? { previousChunkSet } : {}),
    });
  } catch (err) {
    if (err instanceof DocumentTimeoutError) {
      return failAndRecord(
        DocumentErrorReason.TIMEOUT,
        `${sourceName}: parsing and chunking took longer than the limit of ${err.timeoutMs} ms (INGEST_DOCUMENT_TIMEOUT) and were stopped; split the document or raise the limit`,
      );
    }
    if (err instanceof DocumentWorkerError) {
      deps.logger.warn({ err, sourceName }, "parser failed on a document");
      return failAndRecord(DocumentErrorReason.PARSE_FAILED, `${sourceName}: the parser could not read the document; check that it is well-formed ${input.mediaType || "text"}`);
    }
    throw err;
  }
  if (!prepared.ok && prepared.code === "unreadable") return fail(prepared.reason, prepared.message);
  if (prepared.sizeBytes !== undefined) size = prepared.sizeBytes;
  if (!prepared.ok) {
    const reason = prepared.code === "headings-only" ? DocumentErrorReason.EMPTY : (PARSE_REASONS[prepared.code] ?? DocumentErrorReason.PARSE_FAILED);
    return failAndRecord(reason, prepared.message);
  }
  const { chunks } = prepared;
  const tokenCounts = chunks.map((c) => c.tokenCount);

  const stored = previousReady !== null && previousChunkSet !== null && previousReady.chunkSet?.sha256 === prepared.chunkSetSha256;
  if (stored && (await deps.store.hasIndexed(collection, documentId, [chunks[0]!.id, chunks[chunks.length - 1]!.id]))) {
    // Same chunks as stored: nothing to write, nothing to tell downstream.
    return {
      result: create(IngestDocumentResultSchema, {
        sourceName,
        documentId,
        status: DocumentStatus.READY,
        chunkCount: chunks.length,
        changes: create(ChunkChangeCountsSchema, { kept: chunks.length }),
        unchanged: true,
      }),
      tokenCounts,
      bytes: prepared.sizeBytes,
    };
  }

  // The new version's chunk set and chunks are written at once (each is content-addressed or keyed by its own ID,
  // so either may land without the other); the event and the document record, which point at them, only after both.
  // A crash in between leaves the stored version as it was, and the redo writes the same keys again.
  const chunkSetWrite = deps.store.putChunkSet(prepared.chunkSet, prepared.chunkSetSha256);
  // What the stored version holds: its chunk set's IDs, and whatever the chunk index has (all of it when the chunk
  // set is lost), so chunks of a lost version are removed too — read before this version's chunks are indexed.
  // Kept chunks are rewritten when their ordinal or offsets moved (an earlier section changed), and all of them when
  // the stored version was incomplete.
  const toWrite = stored || previousChunkSet === null ? chunks.map((_, i) => i) : prepared.changed;
  const chunksWrite = (previousReady !== null ? deps.store.indexedChunks(collection, documentId) : Promise.resolve([])).then(async (indexed) => {
    await deps.store.putEncodedChunks(collection, documentId, toWrite.map((i) => ({ id: chunks[i]!.id, record: prepared.records[i]! })));
    return indexed;
  });
  const [chunkSet, previouslyIndexed] = await Promise.all([chunkSetWrite, chunksWrite]);
  const previousIds = new Set(prepared.previousIds);
  for (const c of previouslyIndexed) previousIds.add(c.id);
  const next = new Set(chunks.map((c) => c.id));
  const diff = {
    added: chunks.filter((c) => !previousIds.has(c.id)),
    kept: chunks.filter((c) => previousIds.has(c.id)),
    removed: [...previousIds].filter((id) => !next.has(id)),
  };
  await deps.publishChunked({
    collection,
    documentId,
    sourceName,
    title: prepared.title,
    contentSha256: prepared.contentSha256,
    added: diff.added.map((c) => c.id),
    kept: diff.kept.map((c) => c.id),
    removed: diff.removed,
    chunkSet,
    chunking: input.chunkingProto,
  });

  const now = timestampNow();
  const document: Document = create(DocumentSchema, {
    id: documentId,
    collection,
    sourceName,
    mediaType: prepared.mediaType,
    title: prepared.title,
    contentSha256: prepared.contentSha256,
    sizeBytes: BigInt(prepared.sizeBytes),
    charCount: prepared.charCount,
    status: DocumentStatus.READY,
    chunkCount: chunks.length,
    tokenStats: tokenStatsOf(tokenCounts, input.chunking.chunkSize),
    chunking: input.chunkingProto,
    metadata: prepared.metadata,
    chunkSet,
    lastIngestRunId: input.runId,
    createdAt: previous?.createdAt ?? now,
    updatedAt: now,
  });
  await deps.store.putDocument(document);
  // Cleanup of the old version, after the new one is in place.
  await deps.store.deleteChunks(collection, documentId, diff.removed);
  if (previousReady?.chunkSet !== undefined && previousReady.chunkSet.sha256 !== chunkSet.sha256) {
    await deps.store.deleteChunkSet(previousReady.chunkSet);
  }

  return {
    result: create(IngestDocumentResultSchema, {
      sourceName,
      documentId,
      status: DocumentStatus.READY,
      chunkCount: chunks.length,
      changes: create(ChunkChangeCountsSchema, { added: diff.added.length, kept: diff.kept.length, removed: diff.removed.length }),
      unchanged: false,
    }),
    tokenCounts,
    bytes: prepared.sizeBytes,
  };
}

/**
 * Stores a FAILED record for a document that has no stored version yet, so ListDocuments shows it;
 * a stored version (ready or failed before) is left as it is.
 */
async function recordFailure(
  store: DocumentStore,
  collection: string,
  documentId: string,
  sourceName: string,
  input: ProcessInput,
  sizeBytes: number,
  result: IngestDocumentResult,
): Promise<void> {
  const previous = await store.getDocument(collection, documentId);
  if (previous !== null && previous.status === DocumentStatus.READY) return;
  const now = timestampNow();
  await store.putDocument(
    create(DocumentSchema, {
      id: documentId,
      collection,
      sourceName,
      mediaType: input.mediaType,
      title: sourceName,
      sizeBytes: BigInt(sizeBytes),
      status: DocumentStatus.FAILED,
      errorReason: result.errorReason,
      ...(result.error !== undefined ? { error: result.error } : {}),
      chunking: input.chunkingProto,
      lastIngestRunId: input.runId,
      createdAt: previous?.createdAt ?? now,
      updatedAt: now,
    }),
  );
}

/** The token distribution of chunks (their token counts) against the chunk budget, as the API reports it. */
export function tokenStatsOf(tokenCounts: readonly number[], budget: number): TokenStats {
  const dist = tokenDistribution(tokenCounts, budget);
  return create(TokenStatsSchema, {
    count: dist.chunks,
    min: dist.min,
    mean: dist.mean,
    median: dist.median,
    max: dist.max,
    budget,
    shareInTopQuarterOfBudget: dist.shareNearBudget,
    overBudgetCount: dist.overBudget,
    totalTokens: dist.totalTokens,
  });
}
