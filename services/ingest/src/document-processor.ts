import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Logger } from "@ragtune/logger";
import {
  ChunkChangeCountsSchema,
  ChunkSchema,
  DocumentErrorReason,
  DocumentSchema,
  DocumentStatus,
  FailureKind,
  FailureSchema,
  IngestDocumentResultSchema,
  TokenStatsSchema,
  type ArtifactRef,
  type Chunk,
  type ChunkingOptions,
  type Document,
  type IngestDocumentResult,
  type TokenStats,
} from "@ragtune/proto";
import {
  chunkDocument,
  diffChunks,
  DocumentParseError,
  documentIdFor,
  parseDocument,
  tokenDistribution,
  type ParseErrorCode,
  type ParsedDocument,
  type Section,
} from "@ragtune/text";
import { tokenizerKind, type EffectiveChunking, type TokenizerCache } from "./chunking-options.js";
import { encodeChunkSet, type DocumentStore } from "./document-store.js";

/** Publishes the `ragtune.ingest.document.chunked` event of a new document version. */
export type PublishChunked = (event: {
  collection: string;
  documentId: string;
  sourceName: string;
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
  read: () => Promise<Uint8Array>;
  chunking: EffectiveChunking;
  chunkingProto: ChunkingOptions;
}

export interface ProcessDeps {
  store: DocumentStore;
  tokenizers: TokenizerCache;
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

function sha256(data: string): string {
  return createHash("sha256").update(data).digest("hex");
}

function sectionAt(sections: readonly Section[], charStart: number): Section | undefined {
  let lo = 0;
  let hi = sections.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const s = sections[mid]!;
    if (charStart < s.charStart) hi = mid - 1;
    else if (charStart >= s.charEnd) lo = mid + 1;
    else return s;
  }
  return undefined;
}

function headingPathOf(parsed: ParsedDocument, charStart: number): string[] {
  const path = sectionAt(parsed.sections, charStart)?.headingPath ?? [];
  return path.length > 0 ? [...path] : [parsed.title];
}

/**
 * Parses, chunks and stores one document of a run, and reports its result. A document whose
 * chunk set is already stored unchanged writes nothing. A failure never touches the stored
 * version of the document. Write order (chunk set, chunks, event, record, then cleanup of the old
 * version) makes an interrupted document safe to process again.
 */
export async function processDocument(input: ProcessInput, deps: ProcessDeps): Promise<ProcessOutput> {
  const { collection, sourceName } = input;
  const documentId = documentIdFor(collection, sourceName);
  const fail = (reason: DocumentErrorReason, message: string, bytes = 0): ProcessOutput => ({
    result: failedResult(sourceName, documentId, reason, message),
    tokenCounts: [],
    bytes,
  });

  let bytes: Uint8Array;
  try {
    bytes = await input.read();
  } catch (err) {
    if (err instanceof SourceReadError) return fail(err.reason, err.message);
    throw err;
  }

  let parsed: ParsedDocument;
  try {
    parsed = parseDocument(
      { bytes, filename: sourceName, ...(input.mediaType !== "" ? { mediaType: input.mediaType } : {}) },
      { maxBytes: deps.maxDocumentBytes },
    );
  } catch (err) {
    if (err instanceof DocumentParseError) {
      const failed = fail(PARSE_REASONS[err.code] ?? DocumentErrorReason.PARSE_FAILED, err.message, bytes.byteLength);
      await recordFailure(deps.store, collection, documentId, sourceName, input, bytes.byteLength, failed.result);
      return failed;
    }
    deps.logger.warn({ err, sourceName }, "parser failed on a document");
    const failed = fail(DocumentErrorReason.PARSE_FAILED, `${sourceName}: the parser could not read the document; check that it is well-formed ${input.mediaType || "text"}`, bytes.byteLength);
    await recordFailure(deps.store, collection, documentId, sourceName, input, bytes.byteLength, failed.result);
    return failed;
  }

  const previous = await deps.store.getDocument(collection, documentId);
  const previousReady = previous !== null && previous.status === DocumentStatus.READY ? previous : null;
  // The stored chunks of the current version: unchanged sections take theirs instead of being
  // tokenized again, and they are what the new chunks are diffed against.
  const previousChunks = previousReady === null ? [] : await readPreviousChunks(deps, previousReady);

  const tokenizer = deps.tokenizers.get(input.chunking.tokenizer);
  const textChunks = chunkDocument(parsed, {
    tokenizer,
    chunkSize: input.chunking.chunkSize,
    overlap: input.chunking.overlap,
    documentId,
    ...(previousChunks !== undefined ? { previous: previousChunks } : {}),
  });
  if (textChunks.length === 0) {
    const failed = fail(DocumentErrorReason.EMPTY, `${sourceName}: the document holds only headings, no text to chunk`, bytes.byteLength);
    await recordFailure(deps.store, collection, documentId, sourceName, input, bytes.byteLength, failed.result);
    return failed;
  }
  const kind = tokenizerKind(input.chunking.tokenizer);
  const chunks: Chunk[] = textChunks.map((c) =>
    create(ChunkSchema, {
      id: c.id,
      documentId,
      collection,
      headingPath: headingPathOf(parsed, c.charStart),
      text: c.text,
      tokenCount: c.tokenCount,
      charStart: c.charStart,
      charEnd: c.charEnd,
      ordinal: c.ordinal,
      tokenizer: kind,
    }),
  );
  const tokenCounts = chunks.map((c) => c.tokenCount);
  const contentSha256 = sha256(parsed.text);
  const encodedChunkSet = encodeChunkSet(chunks);
  const chunkSetSha256 = createHash("sha256").update(encodedChunkSet).digest("hex");

  if (previousReady !== null && previousReady.chunkSet?.sha256 === chunkSetSha256) {
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
      bytes: bytes.byteLength,
    };
  }

  const chunkSet = await deps.store.putChunkSet(encodedChunkSet);
  const previousIds = (previousChunks ?? (await deps.store.readChunkSet(previousReady!.chunkSet))).map((c) => c.id);
  const diff = diffChunks(previousIds, textChunks);
  // Kept chunks are rewritten too: their ordinal and offsets move when an earlier section changes.
  await deps.store.putChunks(chunks);
  await deps.publishChunked({
    collection,
    documentId,
    sourceName,
    contentSha256,
    added: diff.added.map((c) => c.id),
    kept: diff.kept.map((c) => c.id),
    removed: diff.removed,
    chunkSet,
    chunking: input.chunkingProto,
  });

  const now = timestampNow();
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(parsed.metadata)) {
    if (v === undefined || v === null) continue;
    metadata[k] = typeof v === "string" ? v : JSON.stringify(v);
  }
  const document: Document = create(DocumentSchema, {
    id: documentId,
    collection,
    sourceName,
    mediaType: parsed.mediaType,
    title: parsed.title,
    contentSha256,
    sizeBytes: BigInt(bytes.byteLength),
    charCount: parsed.text.length,
    status: DocumentStatus.READY,
    chunkCount: chunks.length,
    tokenStats: tokenStatsOf(tokenCounts, input.chunking.chunkSize),
    chunking: input.chunkingProto,
    metadata,
    chunkSet,
    lastIngestRunId: input.runId,
    createdAt: previous?.createdAt ?? now,
    updatedAt: now,
  });
  await deps.store.putDocument(document);
  // Cleanup of the old version, after the new one is in place.
  await deps.store.deleteChunks(diff.removed);
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
    bytes: bytes.byteLength,
  };
}

/**
 * The chunk set of a document's stored version, or undefined when it cannot be read: chunking
 * then starts from scratch, and a changed document reads it again for its diff (failing as before).
 */
async function readPreviousChunks(deps: ProcessDeps, document: Document): Promise<Chunk[] | undefined> {
  try {
    return await deps.store.readChunkSet(document.chunkSet);
  } catch (err) {
    deps.logger.warn({ err, documentId: document.id }, "previous chunk set unreadable; re-chunking every section");
    return undefined;
  }
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
