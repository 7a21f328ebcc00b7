import { createHash } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { ChunkSchema, type Chunk } from "@ragtune/proto";
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
  bytes: Uint8Array;
  maxDocumentBytes: number;
  chunking: EffectiveChunking;
  /**
   * The stored chunk set of the document's current version (as `encodeChunkSet` wrote it), when it was read: its
   * unchanged sections keep their chunks instead of being tokenized again, and the new chunks are diffed against it.
   */
  previousChunkSet?: Uint8Array;
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
}

export type DocumentWorkResult = PreparedDocument | RejectedDocument;

/**
 * Parses and chunks one document and builds its stored form (chunk records, chunk set, hashes): all the CPU-heavy
 * work of ingesting it, with no I/O, so it runs in a worker thread (see document-pool.ts) and tests call it directly.
 */
export function prepareDocument(work: DocumentWork, tokenizers: TokenizerCache): DocumentWorkResult {
  const { collection, sourceName } = work;
  const documentId = documentIdFor(collection, sourceName);
  let parsed: ParsedDocument;
  try {
    parsed = parseDocument(
      { bytes: work.bytes, filename: sourceName, ...(work.mediaType !== "" ? { mediaType: work.mediaType } : {}) },
      { maxBytes: work.maxDocumentBytes },
    );
  } catch (err) {
    if (err instanceof DocumentParseError) return { ok: false, code: err.code, message: err.message };
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
    return { ok: false, code: "headings-only", message: `${sourceName}: the document holds only headings, no text to chunk` };
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
