import { createHash } from "node:crypto";
import type { Section } from "./blocks.js";
import type { ParsedDocument } from "./parse.js";
import type { PieceCounts, TokenCounter } from "./tokenizer.js";

export interface ChunkOptions {
  tokenizer: TokenCounter;
  /** Token budget per chunk, counted by `tokenizer` on the chunk text alone (default 512). */
  chunkSize?: number;
  /** Tokens of the previous chunk (same section) repeated at the start of the next (default 0). */
  overlap?: number;
  /** Globally unique document ID (see documentIdFor): it makes chunk IDs unique across documents and collections. */
  documentId: string;
  /**
   * The chunks of the document's previous version, as stored (any order). A section that is
   * unchanged since then (same heading path, text, position among equal sections, and chunking
   * options) takes its previous chunks, moved to the section's new place, instead of being
   * tokenized and split again; the result is exactly what a full re-chunk gives.
   */
  previous?: readonly PreviousChunk[];
}

/**
 * What re-chunking needs of a previous chunk: a ragtune Chunk has it, and so does the stored
 * protobuf Chunk. Each chunk is checked against its ID before it is reused (see chunkDocument).
 */
export interface PreviousChunk {
  id: string;
  text: string;
  tokenCount: number;
  /** Offset of `text` in the previous version's normalized text. */
  charStart: number;
}

export interface Chunk {
  /** Content-addressed, unique across documents and collections; stable across re-ingest. */
  id: string;
  documentId: string;
  /** Position of the chunk in the document, from 0. */
  ordinal: number;
  /** "Guide > Section > Subsection"; the document title for text before the first heading. */
  headingPath: string;
  text: string;
  /** Exact token count of `text` alone (no special tokens) with the chunking tokenizer. */
  tokenCount: number;
  /** [charStart, charEnd) of `text` in the document's normalized text. */
  charStart: number;
  charEnd: number;
  /** Hash of the section the chunk comes from (heading path + section text). */
  sectionHash: string;
}

export const DEFAULT_CHUNK_SIZE = 512;

/** A globally unique, stable document ID from its collection and its path (or name) in that collection. */
export function documentIdFor(collection: string, path: string): string {
  return `doc_${sha256(`ragtune-document-v1\u0000${collection}\u0000${path}`).slice(0, 32)}`;
}

/**
 * Splits a parsed document into chunks that each fit the token budget.
 *
 * Sections are hard boundaries: every section (a heading and its body up to the next heading) is
 * chunked on its own and no chunk spans two sections. That is what makes re-ingest incremental:
 * a chunk's ID is a hash of (chunking config, document ID, section hash, occurrence of that
 * section in the document, index of the chunk in its section, chunk text), so
 *  (a) the same document ingested twice gives the same IDs (everything hashed is deterministic);
 *  (b) identical text in another document or collection gives other IDs (the document ID, itself
 *      derived from collection + path, is hashed);
 *  (c) editing a section changes only that section's chunks: the others keep their section hash,
 *      occurrence and in-section index. The document-wide ordinal is deliberately NOT hashed, since
 *      inserting a chunk would renumber every later chunk.
 * Merging small neighbouring sections into one chunk would make a chunk depend on two sections and
 * let an edit in one move the other's boundaries, breaking (c); so sections are never merged.
 * Heading-only sections (a heading directly followed by a sub-heading) produce no chunk: their
 * title lives on in the heading path of the sections below.
 *
 * Inside a section the split is recursive — paragraph, line, sentence, word, then token — and the
 * resulting pieces are packed greedily, so a tiny trailing piece is merged into its neighbour
 * whenever the two fit together. Sizes are estimated from the tokenizer's pieces and then every
 * chunk is recounted exactly on its own text; a chunk over budget is split again.
 *
 * With `options.previous`, only changed sections are tokenized. A section's chunks depend on
 * nothing but the section text and the options, and a chunk ID hashes exactly those (plus the
 * document, the section's occurrence and the chunk's index in it), so a previous chunk whose ID
 * is what this section would give its i-th chunk of that text IS that chunk. A section takes its
 * previous chunks only when the whole run checks out: IDs for indices 0, 1, …, texts at the same
 * offsets inside the section, the last one ending at the section's end. Anything else (another
 * tokenizer, size or overlap, an edited section, a partial or foreign previous set) is re-chunked.
 * CHUNK_VERSION must change with any change to how a section is split, or stale chunks would pass.
 */
export function chunkDocument(doc: ParsedDocument, options: ChunkOptions): Chunk[] {
  const counter = options.tokenizer;
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  const overlap = options.overlap ?? 0;
  if (!Number.isInteger(chunkSize) || chunkSize < 8) throw new RangeError(`chunkSize must be an integer ≥ 8, got ${chunkSize}`);
  if (!Number.isInteger(overlap) || overlap < 0 || overlap > chunkSize / 2) {
    throw new RangeError(`overlap must be an integer between 0 and chunkSize / 2 (${chunkSize / 2}), got ${overlap}`);
  }
  if (options.documentId.length === 0) throw new RangeError("documentId must not be empty");

  const config = `${CHUNK_VERSION}\u0000${counter.name}\u0000${chunkSize}\u0000${overlap}\u0000${options.documentId}`;
  const previous = options.previous !== undefined && options.previous.length > 0 ? new PreviousChunks(options.previous) : undefined;
  const occurrences = new Map<string, number>();
  const chunks: Chunk[] = [];
  for (const section of doc.sections) {
    const sectionText = doc.text.slice(section.charStart, section.charEnd);
    if (isHeadingOnly(section, sectionText)) continue;
    const headingPath = section.headingPath.length > 0 ? section.headingPath.join(" > ") : doc.title;
    const sectionHash = sha256(`${section.headingPath.join("\u001f")}\u0000${sectionText}`).slice(0, 32);
    const occurrence = occurrences.get(sectionHash) ?? 0;
    occurrences.set(sectionHash, occurrence + 1);
    const chunkId = (index: number, text: string): string =>
      `ch_${sha256(`${config}\u0000${sectionHash}\u0000${occurrence}\u0000${index}\u0000${text}`).slice(0, 40)}`;

    const ranges = previous?.take(sectionText, chunkId) ?? chunkSection(sectionText, counter, chunkSize, overlap);
    ranges.forEach((range, index) => {
      const text = sectionText.slice(range.start, range.end);
      chunks.push({
        id: range.id ?? chunkId(index, text),
        documentId: options.documentId,
        ordinal: chunks.length,
        headingPath,
        text,
        tokenCount: range.tokens,
        charStart: section.charStart + range.start,
        charEnd: section.charStart + range.end,
        sectionHash,
      });
    });
  }
  return chunks;
}

export interface ChunkDiff {
  /** Chunks whose IDs were not there before. */
  added: Chunk[];
  /** Chunks that keep their ID (and therefore their text and position in their section). */
  kept: Chunk[];
  /** IDs that are gone. */
  removed: string[];
}

/** What changed between a document's previous chunk IDs and its new chunks (incremental re-ingest). */
export function diffChunks(previousIds: Iterable<string>, nextChunks: readonly Chunk[]): ChunkDiff {
  const previous = new Set(previousIds);
  const next = new Set<string>();
  const added: Chunk[] = [];
  const kept: Chunk[] = [];
  for (const chunk of nextChunks) {
    next.add(chunk.id);
    (previous.has(chunk.id) ? kept : added).push(chunk);
  }
  const removed = [...previous].filter((id) => !next.has(id));
  return { added, kept, removed };
}

function isHeadingOnly(section: Section, text: string): boolean {
  return section.level > 0 && !text.includes("\n");
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

interface Range {
  start: number;
  end: number;
  tokens: number;
  /** The chunk's ID when it is already known (a reused previous chunk). */
  id?: string;
}

/** Names the splitting algorithm in every chunk ID: change it whenever chunkSection's output can change. */
const CHUNK_VERSION = "ragtune-chunk-v1";

/** Length of the text prefix previous chunks are looked up by. */
const PREFIX = 32;

/** The previous version's chunks, looked up by the start of a section's text (see chunkDocument). */
class PreviousChunks {
  private readonly chunks: readonly PreviousChunk[];
  /** Indices into `chunks` by the first PREFIX characters of their text. */
  private readonly byPrefix = new Map<string, number[]>();
  /** Lengths of texts shorter than PREFIX (they are keyed by their whole text). */
  private readonly shortLengths: number[];

  constructor(previous: readonly PreviousChunk[]) {
    // Document order: within and across sections, chunk starts strictly increase (overlap included).
    this.chunks = [...previous].sort((a, b) => a.charStart - b.charStart);
    const short = new Set<number>();
    this.chunks.forEach((chunk, i) => {
      const key = chunk.text.slice(0, PREFIX);
      if (key.length < PREFIX) short.add(key.length);
      const list = this.byPrefix.get(key);
      if (list === undefined) this.byPrefix.set(key, [i]);
      else list.push(i);
    });
    this.shortLengths = [...short];
  }

  /**
   * The section's previous chunks as ranges of `sectionText`, when a complete, verified run of
   * them exists; undefined otherwise. `chunkId(i, text)` is the ID the section gives its i-th chunk.
   */
  take(sectionText: string, chunkId: (index: number, text: string) => string): Range[] | undefined {
    const candidates = new Set([sectionText.slice(0, PREFIX), ...this.shortLengths.map((n) => sectionText.slice(0, n))]);
    for (const key of candidates) {
      for (const first of this.byPrefix.get(key) ?? []) {
        const run = this.runFrom(first, sectionText, chunkId);
        if (run !== undefined) return run;
      }
    }
    return undefined;
  }

  /** The run of chunks from index `first` (the section's chunk 0) to the section's end, if every one checks out. */
  private runFrom(first: number, sectionText: string, chunkId: (index: number, text: string) => string): Range[] | undefined {
    // A section's text starts with its heading or first block, never with whitespace, so its
    // first chunk starts at its start; the others sit at the same offsets as before.
    const base = this.chunks[first]!.charStart;
    const run: Range[] = [];
    for (let i = first; i < this.chunks.length; i++) {
      const chunk = this.chunks[i]!;
      const start = chunk.charStart - base;
      const end = start + chunk.text.length;
      if (end > sectionText.length || !sectionText.startsWith(chunk.text, start)) break;
      const id = chunkId(run.length, chunk.text);
      if (chunk.id !== id) break;
      run.push({ start, end, tokens: chunk.tokenCount, id });
      if (end === sectionText.length) return run;
    }
    return undefined;
  }
}

/** Separators from coarse to fine; each yields cut points (where the next piece starts). */
const SEPARATORS: RegExp[] = [/\n\n+/g, /\n/g, /(?<=[.!?:;])\s+(?=\S)/g, /\s+/g];

/** Splits one section's text into ranges that fit the budget (token counts exact). */
function chunkSection(text: string, counter: TokenCounter, chunkSize: number, overlap: number): Range[] {
  const sizer = new RangeSizer(text, counter.pieces(text));
  const budget = chunkSize - overlap;
  const packed = pack(text, sizer, counter, budget, atoms(text, sizer, counter, 0, text.length, budget, 0));
  if (overlap === 0) return packed;
  return packed.map((range, i) => (i === 0 ? range : withOverlap(text, sizer, counter, range, packed[i - 1]!, chunkSize, overlap)));
}

/** Estimates a range's tokens from the tokenizer's pieces (exact up to the first piece's marker). */
class RangeSizer {
  private readonly ends: number[];
  private readonly cumulative: Float64Array;

  constructor(private readonly text: string, pieces: PieceCounts) {
    this.ends = pieces.ends;
    this.cumulative = new Float64Array(pieces.counts.length + 1);
    pieces.counts.forEach((n, i) => (this.cumulative[i + 1] = this.cumulative[i]! + n));
  }

  estimate(start: number, end: number): number {
    if (end <= start) return 0;
    const first = this.pieceAt(start);
    const last = this.pieceAt(end - 1);
    return this.cumulative[last + 1]! - this.cumulative[first]! + 1;
  }

  /** Index of the piece holding character `pos`. */
  private pieceAt(pos: number): number {
    let low = 0;
    let high = this.ends.length - 1;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (this.ends[mid]! > pos) high = mid;
      else low = mid + 1;
    }
    return low;
  }

  /** Piece ends inside (start, end) next to whitespace: where a range may start at a word. */
  boundaries(start: number, end: number): number[] {
    const out: number[] = [];
    for (let i = this.pieceAt(start); i < this.ends.length && this.ends[i]! < end; i++) {
      const cut = this.ends[i]!;
      if (cut > start && (isSpace(this.text.charCodeAt(cut)) || isSpace(this.text.charCodeAt(cut - 1)))) out.push(cut);
    }
    return out;
  }
}

/** Trims whitespace off a range. */
function trim(text: string, start: number, end: number): [number, number] {
  while (start < end && isSpace(text.charCodeAt(start))) start++;
  while (end > start && isSpace(text.charCodeAt(end - 1))) end--;
  return [start, end];
}

function isSpace(c: number): boolean {
  return c === 32 || c === 10 || c === 9 || c === 13 || c === 12;
}

/**
 * Recursive split into atoms that each fit `budget` by estimate, appended to `out` (never spread into a call: a
 * 200,000-word line yields 200,000 atoms, more than a call's arguments may hold).
 */
function atoms(
  text: string,
  sizer: RangeSizer,
  counter: TokenCounter,
  from: number,
  to: number,
  budget: number,
  level: number,
  out: [number, number][] = [],
): [number, number][] {
  const [start, end] = trim(text, from, to);
  if (start >= end) return out;
  if (sizer.estimate(start, end) <= budget) {
    out.push([start, end]);
    return out;
  }
  if (level >= SEPARATORS.length) {
    for (const range of tokenSplit(text, counter, start, end, budget)) out.push(range);
    return out;
  }
  const separator = new RegExp(SEPARATORS[level]!.source, "g");
  separator.lastIndex = start;
  let pieceStart = start;
  const slice = text.slice(0, end);
  for (let m = separator.exec(slice); m !== null; m = separator.exec(slice)) {
    if (m.index <= pieceStart) continue;
    atoms(text, sizer, counter, pieceStart, m.index, budget, level + 1, out);
    pieceStart = m.index + m[0].length;
  }
  if (pieceStart === start) return atoms(text, sizer, counter, start, end, budget, level + 1, out);
  return atoms(text, sizer, counter, pieceStart, end, budget, level + 1, out);
}

/**
 * Last resort for a word longer than the budget: the longest prefixes that fit, by exact count. Each cut starts from
 * a guess the length of the previous cut and moves by interpolation (the characters per token of the last probe)
 * towards the budget, then one character at a time across it; after a few probes without closing the bracket it
 * bisects. A cut so takes a handful of counts of about its own length, and a 300,000-character word is split in time
 * proportional to its length, not to its length squared.
 */
function tokenSplit(text: string, counter: TokenCounter, start: number, end: number, budget: number): [number, number][] {
  const out: [number, number][] = [];
  let step = budget * 2;
  while (start < end) {
    // low: the longest prefix end known to fit (one character always does); high: the shortest known not to.
    let low = start + 1;
    let high = end + 1;
    let probe = Math.min(end, start + step);
    for (let probes = 1; ; probes++) {
      const tokens = counter.count(text.slice(start, probe));
      if (tokens <= budget) low = probe;
      else high = probe;
      if (low >= end || high - low <= 1) break;
      let next: number;
      if (probes >= TOKEN_SPLIT_INTERPOLATIONS) next = high > end ? low + (low - start) : (low + high) >> 1;
      else if (tokens === budget) next = probe + 1;
      else {
        const perToken = (probe - start) / Math.max(1, tokens);
        next = tokens < budget ? probe + Math.max(1, Math.floor((budget - tokens) * perToken)) : probe - Math.max(1, Math.ceil((tokens - budget) * perToken));
      }
      probe = Math.min(high - 1, end, Math.max(low + 1, next));
    }
    // Never cut a surrogate pair.
    if (low < end && isLowSurrogate(text.charCodeAt(low)) && low - 1 > start) low--;
    out.push([start, low]);
    step = Math.max(1, low - start);
    start = low;
  }
  return out;
}

/** Probes of one cut that may move by interpolation before tokenSplit bisects (or gallops) instead. */
const TOKEN_SPLIT_INTERPOLATIONS = 8;

function isLowSurrogate(c: number): boolean {
  return c >= 0xdc00 && c <= 0xdfff;
}

/** Greedy packing of atoms into ranges, then exact recount (re-split anything over budget). */
function pack(
  text: string,
  sizer: RangeSizer,
  counter: TokenCounter,
  budget: number,
  parts: [number, number][],
): Range[] {
  const packed: [number, number][] = [];
  for (const [start, end] of parts) {
    const last = packed[packed.length - 1];
    if (last !== undefined && sizer.estimate(last[0], end) <= budget) last[1] = end;
    else packed.push([start, end]);
  }
  const out: Range[] = [];
  for (const [start, end] of packed) {
    const tokens = counter.count(text.slice(start, end));
    if (tokens <= budget) {
      out.push({ start, end, tokens });
      continue;
    }
    // The estimate was low (a marker effect at a cut): split this range with a tighter budget.
    const tighter = Math.max(1, budget - (tokens - budget) - 1);
    for (const range of pack(text, sizer, counter, budget, atoms(text, sizer, counter, start, end, tighter, 0))) out.push(range);
  }
  // A tiny trailing piece joins its neighbour when the two fit together.
  if (out.length >= 2) {
    const last = out[out.length - 1]!;
    const prev = out[out.length - 2]!;
    if (last.tokens < budget / 8) {
      const tokens = counter.count(text.slice(prev.start, last.end));
      if (tokens <= budget) out.splice(out.length - 2, 2, { start: prev.start, end: last.end, tokens });
    }
  }
  return out;
}

/** Extends `range` backwards into `previous` by up to `overlap` tokens, starting at a word. */
function withOverlap(
  text: string,
  sizer: RangeSizer,
  counter: TokenCounter,
  range: Range,
  previous: Range,
  chunkSize: number,
  overlap: number,
): Range {
  const cuts = sizer.boundaries(previous.start, previous.end).filter((c) => c < previous.end);
  for (const cut of cuts) {
    const [start] = trim(text, cut, previous.end);
    if (start >= previous.end || sizer.estimate(start, previous.end) > overlap) continue;
    const tokens = counter.count(text.slice(start, range.end));
    if (tokens <= chunkSize) return { start, end: range.end, tokens };
  }
  return range;
}
