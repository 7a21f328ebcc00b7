import { createHash } from "node:crypto";
import { closeSync, fstatSync, openSync, readFileSync } from "node:fs";
import { create, toBinary } from "@bufbuild/protobuf";
import { ChunkSchema, DocumentErrorReason, type Chunk } from "@ragtune/proto";
import {
  chunkDocument,
  DocumentParseError,
  documentIdFor,
  parseDocument,
  type ParseErrorCode,
  type ParsedDocument,
} from "@ragtune/text";
import { tokenizerKind, type EffectiveChunking, type TokenizerCache } from "./chunking-options.js";
import { decodeChunkSet, encodeChunkSet } from "./document-store.js";

/** One document to parse and chunk: everything the work needs, nothing it must fetch (it runs in a worker thread). */
export interface DocumentWork {
  collection: string;
  sourceName: string;
  /** The request's media type, or "" to detect it from the source name. */
  mediaType: string;
  /** The document's bytes, or (a file of a server path) where the worker reads them, with the size limit. */
  bytes?: Uint8Array;
  path?: string;
  maxDocumentBytes: number;
  chunking: EffectiveChunking;
  /**
   * The stored chunk set of the document's current version (as `encodeChunkSet` wrote it), when it was read: its
   * unchanged sections keep their chunks instead of being tokenized again, and the new chunks are diffed against it.
   */
  previousChunkSet?: Uint8Array;
}

/** States of a document posted to a worker of the pool (a 32-bit word shared by the pool and the worker). */
export const CLAIM = { unclaimed: 0, claimed: 1, takenBack: 2 } as const;

/**
 * In a worker of the pool: takes a posted document (its `claim`, see WorkerTask); false when the pool took it back
 * for another worker, and the worker skips it without a reply.
 */
export function claimTask(task: { claim: SharedArrayBuffer }): boolean {
  return Atomics.compareExchange(new Int32Array(task.claim), 0, CLAIM.unclaimed, CLAIM.claimed) === CLAIM.unclaimed;
}

/** What the document's new version is, ready to store. */
export interface PreparedDocument {
  ok: true;
  documentId: string;
  mediaType: string;
  title: string;
  /** Front matter / meta tags, values as strings (objects as JSON). */
  metadata: Record<string, string>;
  contentSha256: string;
  charCount: number;
  /** Bytes of the document as read. */
  sizeBytes: number;
  /**
   * The chunks, in ordinal order, by ID and token count: what the service's main thread reads of them (the texts
   * travel in `records` and `chunkSet` only, so the reply from the worker thread stays small to decode).
   */
  chunks: ChunkSummary[];
  /** Each chunk encoded as the chunk index stores it (protobuf), so the service's main thread does not encode them. */
  records: Uint8Array[];
  /** The chunk set of this version (encodeChunkSet) and its SHA-256: equal to the stored one means unchanged. */
  chunkSet: Uint8Array;
  chunkSetSha256: string;
  /** IDs of the previous version's chunks (from `previousChunkSet`; [] without it). */
  previousIds: string[];
  /**
   * Indices into `chunks` of the chunks whose stored record must be written: new ones, and kept ones whose ordinal or
   * offsets moved. Without a previous chunk set: every chunk.
   */
  changed: number[];
}

/** A chunk of a prepared document as the main thread needs it. */
export interface ChunkSummary {
  id: string;
  tokenCount: number;
}

/** A document that cannot be ingested, with the parser's code (or `headings-only`) and a message naming the problem. */
export interface RejectedDocument {
  ok: false;
  code: ParseErrorCode | "headings-only";
  message: string;
  /** Bytes of the document as read (absent from the pool's test workers). */
  sizeBytes?: number;
}

/** A file (DocumentWork.path) that could not be read: the reason of its per-document error and a message. */
export interface UnreadableDocument {
  ok: false;
  code: "unreadable";
  reason: DocumentErrorReason;
  message: string;
}

export type DocumentWorkResult = PreparedDocument | RejectedDocument | UnreadableDocument;

/**
 * Reads a document's file in the worker (synchronously: it is the worker's own thread, and a file read there costs
 * a few system calls, where the main thread paid four thread-pool round trips and their promises per document).
 * One open file for the size check and the read.
 */
function readSource(path: string, sourceName: string, max: number): Uint8Array | UnreadableDocument {
  const unreadable = (reason: DocumentErrorReason, message: string): UnreadableDocument => ({ ok: false, code: "unreadable", reason, message });
  const permissions = () => unreadable(DocumentErrorReason.PATH_NOT_FOUND, `${sourceName}: the file cannot be read (check its permissions)`);
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return unreadable(DocumentErrorReason.PATH_NOT_FOUND, `${sourceName}: the file no longer exists`);
    return permissions();
  }
  try {
    let size: number;
    try {
      size = fstatSync(fd).size;
    } catch {
      return permissions();
    }
    if (size > max) {
      return unreadable(DocumentErrorReason.TOO_LARGE, `${sourceName}: the document is ${size} bytes, over the limit of ${max} bytes (INGEST_MAX_DOCUMENT_BYTES)`);
    }
    try {
      return readFileSync(fd);
    } catch {
      return permissions();
    }
  } finally {
    try {
      closeSync(fd);
    } catch {
      // nothing to do: the bytes are read
    }
  }
}

/**
 * Parses and chunks one document and builds its stored form (chunk records, chunk set, hashes): all the CPU-heavy
 * work of ingesting it, with no I/O, so it runs in a worker thread (see document-pool.ts) and tests call it directly.
 */
export function prepareDocument(work: DocumentWork, tokenizers: TokenizerCache): DocumentWorkResult {
  const { collection, sourceName } = work;
  const documentId = documentIdFor(collection, sourceName);
  const bytes = work.path !== undefined ? readSource(work.path, sourceName, work.maxDocumentBytes) : (work.bytes ?? new Uint8Array());
  if (!(bytes instanceof Uint8Array)) return bytes;
  let parsed: ParsedDocument;
  try {
    parsed = parseDocument(
      { bytes, filename: sourceName, ...(work.mediaType !== "" ? { mediaType: work.mediaType } : {}) },
      { maxBytes: work.maxDocumentBytes },
    );
  } catch (err) {
    if (err instanceof DocumentParseError) return { ok: false, code: err.code, message: err.message, sizeBytes: bytes.byteLength };
    throw err;
  }

  const previous = work.previousChunkSet === undefined ? [] : decodeChunkSet(work.previousChunkSet);
  const textChunks = chunkDocument(parsed, {
    tokenizer: tokenizers.get(work.chunking.tokenizer),
    chunkSize: work.chunking.chunkSize,
    overlap: work.chunking.overlap,
    packSections: work.chunking.packSections,
    documentId,
    previous,
  });
  if (textChunks.length === 0) {
    return { ok: false, code: "headings-only", message: `${sourceName}: the document holds only headings, no text to chunk`, sizeBytes: bytes.byteLength };
  }
  const kind = tokenizerKind(work.chunking.tokenizer);
  const chunks: Chunk[] = textChunks.map((c) =>
    create(ChunkSchema, {
      id: c.id,
      documentId,
      collection,
      headingPath: c.headingTitles,
      text: c.text,
      tokenCount: c.tokenCount,
      charStart: c.charStart,
      charEnd: c.charEnd,
      ordinal: c.ordinal,
      tokenizer: kind,
    }),
  );
  const chunkSet = encodeChunkSet(chunks);
  const stored = new Map(previous.map((c) => [c.id, c]));
  const changed: number[] = [];
  chunks.forEach((c, i) => {
    const before = stored.get(c.id);
    if (before === undefined || before.ordinal !== c.ordinal || before.charStart !== c.charStart || before.charEnd !== c.charEnd) changed.push(i);
  });
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(parsed.metadata)) {
    if (v === undefined || v === null) continue;
    metadata[k] = typeof v === "string" ? v : JSON.stringify(v);
  }
  return {
    ok: true,
    documentId,
    mediaType: parsed.mediaType,
    title: parsed.title,
    metadata,
    contentSha256: sha256(parsed.text),
    charCount: parsed.text.length,
    sizeBytes: bytes.byteLength,
    chunks: chunks.map((c) => ({ id: c.id, tokenCount: c.tokenCount })),
    records: chunks.map((c) => toBinary(ChunkSchema, c)),
    chunkSet,
    chunkSetSha256: createHash("sha256").update(chunkSet).digest("hex"),
    previousIds: previous.map((c) => c.id),
    changed,
  };
}

function sha256(data: string): string {
  return createHash("sha256").update(data).digest("hex");
}
