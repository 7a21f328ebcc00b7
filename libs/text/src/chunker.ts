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
  /**
   * Pack consecutive small sibling sections into one chunk up to the budget (default DEFAULT_PACK_SECTIONS): the
   * chunk's heading path is their parent's and each section's heading stays in its text. See chunkDocument.
   */
  packSections?: boolean;
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
  /**
   * "Guide > Section > Subsection"; the document title for text before the first heading. A chunk of packed sibling
   * sections carries their parent's path (the document title when they are top-level).
   */
  headingPath: string;
  /** The same path as a list of titles (never empty: [title] where `headingPath` is the title). */
  headingTitles: string[];
  text: string;
  /** Exact token count of `text` alone (no special tokens) with the chunking tokenizer. */
  tokenCount: number;
  /** [charStart, charEnd) of `text` in the document's normalized text. */
  charStart: number;
  charEnd: number;
  /**
   * Hash of the section the chunk comes from (heading path + section text); with packing, of the run of sections it
   * was packed from (each one's hash and heading level).
   */
  sectionHash: string;
}

export const DEFAULT_CHUNK_SIZE = 512;

/** Whether chunkDocument packs small sibling sections when `packSections` is not given. */
export const DEFAULT_PACK_SECTIONS = true;

/** A globally unique, stable document ID from its collection and its path (or name) in that collection. */
export function documentIdFor(collection: string, path: string): string {
  return `doc_${sha256(`ragtune-document-v1\u0000${collection}\u0000${path}`).slice(0, 32)}`;
}

/**
 * Splits a parsed document into chunks that each fit the token budget.
 *
 * Sections are the units of change: every section (a heading and its body up to the next heading) is chunked on its
 * own or, with packing, together with neighbouring small sections (below), and no chunk spans two such units. That is
 * what makes re-ingest incremental: a chunk's ID is a hash of (chunking config, document ID, unit hash, occurrence of
 * that unit in the document, index of the chunk in its unit, chunk text), so
 *  (a) the same document ingested twice gives the same IDs (everything hashed is deterministic);
 *  (b) identical text in another document or collection gives other IDs (the document ID, itself
 *      derived from collection + path, is hashed);
 *  (c) editing a section changes only the chunks of the unit holding it (with packing, and rarely, the grouping of a
 *      few units after it: see SectionPacker): the others keep their unit hash, occurrence and in-unit index. The
 *      document-wide ordinal is deliberately NOT hashed, since inserting a chunk would renumber every later chunk.
 * Heading-only sections (a heading directly followed by a sub-heading) produce no chunk: their
 * title lives on in the heading path of the sections below.
 *
 * Packing (`packSections`, on by default): short sections would make short chunks, so a run of consecutive sibling
 * sections (same parent and level), led by their parent's own text when it comes right before them, is packed into
 * chunks of whole sections up to the budget (SectionPacker). Such a chunk's heading path is the parent's, and each
 * section's heading stays in its text (every section's text starts with its heading line). Its unit hash covers its
 * sections' hashes and heading levels. A section that does not fit the budget alone is a unit of its own, as without
 * packing.
 *
 * Inside a section the split is recursive — paragraph, line, sentence, word, then token — and the
 * resulting pieces are packed greedily, so a tiny trailing piece is merged into its neighbour
 * whenever the two fit together. Sizes are estimated from the tokenizer's pieces and then every
 * chunk is recounted exactly on its own text; a chunk over budget is split again.
 *
 * With `options.previous`, only changed units are tokenized. A unit's chunks depend on nothing but its text and the
 * options, and a chunk ID hashes exactly those (plus the document, the unit's occurrence and the chunk's index in
 * it), so a previous chunk whose ID is what this unit would give its i-th chunk of that text IS that chunk. A unit
 * takes its previous chunks only when the whole run checks out: IDs for indices 0, 1, …, texts at the same offsets
 * inside the unit, the last one ending at the unit's end. With packing, which sections form a unit also depends on
 * the section after it, so a packed unit is taken only when a previous unit starting at that section checks out too
 * and came right after it then; the walk otherwise tokenizes the sections it groups (the edited ones and their
 * neighbours up to where the grouping meets the previous one again). Anything else (another tokenizer, size, overlap
 * or packing, an edited section, a partial or foreign previous set) is re-chunked. CHUNK_VERSION and PACK_VERSION
 * must change with any change to how a section is split or sections are grouped, or stale chunks would pass.
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
  const packing = options.packSections ?? DEFAULT_PACK_SECTIONS;

  const config = `${packing ? PACK_VERSION : CHUNK_VERSION}\u0000${counter.name}\u0000${chunkSize}\u0000${overlap}\u0000${options.documentId}`;
  const previous = options.previous !== undefined && options.previous.length > 0 ? new PreviousChunks(options.previous) : undefined;
  const items: SectionItem[] = [];
  for (const section of doc.sections) {
    const text = doc.text.slice(section.charStart, section.charEnd);
    if (isHeadingOnly(section, text)) continue;
    items.push({ section, text, hash: sha256(`${section.headingPath.join("\u001f")}\u0000${text}`).slice(0, 32) });
  }

  const occurrences = new Map<string, number>();
  const chunkIdOf = (unitHash: string, occurrence: number): ChunkId => (index, text) =>
    `ch_${sha256(`${config}\u0000${unitHash}\u0000${occurrence}\u0000${index}\u0000${text}`).slice(0, 40)}`;
  const chunks: Chunk[] = [];
  /** Adds the chunks of the unit of sections first..last, whose ranges are relative to its text. */
  const emit = (first: number, last: number, unitHash: string, ranges: (chunkId: ChunkId) => Range[]): void => {
    const occurrence = occurrences.get(unitHash) ?? 0;
    occurrences.set(unitHash, occurrence + 1);
    const chunkId = chunkIdOf(unitHash, occurrence);
    const { section } = items[first]!;
    const path = first === last || isChild(section, items[first + 1]!.section) ? section.headingPath : section.headingPath.slice(0, -1);
    const headingTitles = path.length > 0 ? [...path] : [doc.title];
    const headingPath = headingTitles.join(" > ");
    ranges(chunkId).forEach((range, index) => {
      const text = doc.text.slice(section.charStart + range.start, section.charStart + range.end);
      chunks.push({
        id: range.id ?? chunkId(index, text),
        documentId: options.documentId,
        ordinal: chunks.length,
        headingPath,
        headingTitles: [...headingTitles],
        text,
        tokenCount: range.tokens,
        charStart: section.charStart + range.start,
        charEnd: section.charStart + range.end,
        sectionHash: unitHash,
      });
    });
  };

  if (!packing) {
    for (const [k, item] of items.entries()) {
      const ranges = (chunkId: ChunkId): Range[] =>
        previous?.take(doc.text, item.section.charStart, item.text.length, (end) => (end === item.text.length ? chunkId : undefined))?.ranges ??
        chunkSection(item.text, counter, chunkSize, overlap);
      emit(k, k, item.hash, ranges);
    }
    return chunks;
  }

  const packer = new SectionPacker(doc.text, items, counter, chunkSize, overlap);
  const unitHashOf = (first: number, last: number): string =>
    sha256(`pack\u0000${items.slice(first, last + 1).map((item) => `${item.hash}:${item.section.level}`).join("\u0000")}`).slice(0, 32);
  /** The previous version's unit starting at section `first` (ending in its run), when one checks out. */
  const previousUnit = (first: number, runEnd: number, emitted?: string): { last: number; ranges: Range[]; after: number } | undefined => {
    if (previous === undefined) return undefined;
    const start = items[first]!.section.charStart;
    const lastByEnd = new Map<number, number>();
    for (let last = first; last <= runEnd; last++) lastByEnd.set(items[last]!.section.charEnd - start, last);
    const found = previous.take(doc.text, start, items[runEnd]!.section.charEnd - start, (end) => {
      const last = lastByEnd.get(end);
      if (last === undefined) return undefined;
      const unitHash = unitHashOf(first, last);
      return chunkIdOf(unitHash, (occurrences.get(unitHash) ?? 0) + (unitHash === emitted ? 1 : 0));
    });
    return found === undefined ? undefined : { last: lastByEnd.get(found.end)!, ranges: found.ranges, after: found.after };
  };

  for (let first = 0; first < items.length; ) {
    const runEnd = packer.runEnd(first);
    let unit = previousUnit(first, runEnd);
    // A section that was one chunk on its own tells its count: the grouping need not tokenize it again.
    if (unit?.last === first && unit.ranges.length === 1) packer.knowCount(first, unit.ranges[0]!.tokens);
    // A unit's grouping depends on its sections and on the one after it (which stopped it); reuse it only when that
    // one is unchanged and was the next section then too: a previous unit starting there checks out, and its first
    // chunk came right after this unit's last. A section split into several chunks stands alone whatever follows,
    // and a run's last section has no successor in it.
    if (unit !== undefined && unit.last < runEnd && !(unit.last === first && unit.ranges.length > 1)) {
      const stopper = previousUnit(unit.last + 1, packer.runEnd(unit.last + 1), unitHashOf(first, unit.last));
      if (stopper?.last === unit.last + 1 && stopper.ranges.length === 1) packer.knowCount(unit.last + 1, stopper.ranges[0]!.tokens);
      if (stopper === undefined || stopper.after - stopper.ranges.length !== unit.after) unit = undefined;
    }
    const last = unit?.last ?? packer.unitEnd(first, runEnd);
    emit(first, last, unitHashOf(first, last), () => unit?.ranges ?? packer.ranges(first, last));
    first = last + 1;
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
/** The same for chunking with packing: change it whenever SectionPacker's or chunkSection's output can change. */
const PACK_VERSION = "ragtune-pack-v1";

/** The ID of a unit's i-th chunk with text `text`. */
type ChunkId = (index: number, text: string) => string;

/** Previous chunks that check out as a unit's: where the unit ends (relative to its start), where the next one starts. */
interface TakenUnit {
  end: number;
  ranges: Range[];
  /** Position, in document order, of the previous chunk after the unit's last. */
  after: number;
}

/** A section with text (heading-only sections make no chunk) and its hash (heading path + text). */
interface SectionItem {
  section: Section;
  text: string;
  hash: string;
}

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
   * The previous chunks of a unit (a section, or a run of packed sections) starting at `start` in `text`, as ranges of
   * the unit's text, when a complete, verified run of them exists; undefined otherwise. The unit ends at most `maxEnd`
   * after `start`; `idsAt(end)` says whether it may end at `end` (relative to `start`) and, if so, gives the IDs its
   * chunks have then: `chunkId(i, text)` for its i-th chunk. `end` says where the run checked out.
   */
  take(text: string, start: number, maxEnd: number, idsAt: (end: number) => ChunkId | undefined): TakenUnit | undefined {
    const unitText = text.slice(start, start + Math.min(maxEnd, PREFIX));
    const candidates = new Set([unitText.slice(0, PREFIX), ...this.shortLengths.map((n) => unitText.slice(0, n))]);
    for (const key of candidates) {
      for (const first of this.byPrefix.get(key) ?? []) {
        const run = this.runFrom(first, text, start, maxEnd, idsAt);
        if (run !== undefined) return run;
      }
    }
    return undefined;
  }

  /** The run of chunks from index `first` (the unit's chunk 0) to one of the unit's ends, if every one checks out. */
  private runFrom(first: number, text: string, unitStart: number, maxEnd: number, idsAt: (end: number) => ChunkId | undefined): TakenUnit | undefined {
    // A section's text starts with its heading or first block, never with whitespace, so a unit's first chunk starts
    // at its start; the others sit at the same offsets as before.
    const base = this.chunks[first]!.charStart;
    const run: PreviousChunk[] = [];
    for (let i = first; i < this.chunks.length; i++) {
      const chunk = this.chunks[i]!;
      const start = chunk.charStart - base;
      const end = start + chunk.text.length;
      if (end > maxEnd || !text.startsWith(chunk.text, unitStart + start)) return undefined;
      run.push(chunk);
      const chunkId = idsAt(end);
      if (chunkId !== undefined && run.every((c, index) => c.id === chunkId(index, c.text))) {
        const ranges = run.map((c) => ({ start: c.charStart - base, end: c.charStart - base + c.text.length, tokens: c.tokenCount, id: c.id }));
        return { end, ranges, after: i + 1 };
      }
      if (end === maxEnd) return undefined;
    }
    return undefined;
  }
}

/**
 * Share of the budget a unit must hold before an anchor section may end it (see SectionPacker). Higher fills units
 * better, lower lets two packings meet again sooner. On 60 seeded FAQ documents of 90 sibling sections (about 20
 * chunks each; chunker.test.ts), with anchors one section in 3: at 0.5, an edit changed 2.4 chunks on average and up
 * to 12; at 0.4, 1.8 and up to 6, with 77% of chunks at least half full instead of 96% (greedy packing without
 * anchors: 7.0 and up to 19). On the AWS corpus the share of chunks at least half full is 69% at 0.4, 71% at 0.5.
 */
const FILL_BEFORE_ANCHOR = 0.4;
/** One section in ANCHOR_EVERY, by its hash, is an anchor. */
const ANCHOR_EVERY = 3;
/** A section longer than this many characters per token of the budget is never packed (and is not counted to know). */
const MAX_CHARS_PER_TOKEN = 64;

/**
 * Groups the sections of a document into units (see chunkDocument): a run of consecutive sibling sections (same
 * parent, same level, no other section with text between them) is packed greedily, in order, into units that fit the
 * budget; a section that does not fit the budget alone stands alone and is split.
 *
 * Greedy packing alone would let an edit that grows or shrinks one section shift every later boundary of its run. So
 * a unit also ends before an "anchor" section (one in ANCHOR_EVERY, chosen by the section's hash, so by its content)
 * once it holds at least FILL_BEFORE_ANCHOR of the budget. Two packings of the same run that started at different
 * places end their units at the same anchor as soon as both units have reached that fill there, and from then on
 * they agree: an edit re-groups the sections up to the next such anchor or two, not the rest of the run.
 *
 * Every decision about a unit depends only on its own sections and the one after it (which ended it): its text,
 * heading path and level. Section sizes are the sections' exact counts plus a separator allowance per boundary between
 * two of them (the blank line's tokens and one more: the next heading's first word no longer follows a space); the unit's text
 * is then counted exactly, and in the rare case that it is over budget it is split at section boundaries.
 */
class SectionPacker {
  private readonly counts = new Map<number, number>();
  /** Tokens allowed for each boundary between two packed sections (counted when first needed). */
  private separatorTokens: number | undefined;

  constructor(
    private readonly text: string,
    private readonly items: readonly SectionItem[],
    private readonly counter: TokenCounter,
    private readonly chunkSize: number,
    private readonly overlap: number,
  ) {}

  private get separator(): number {
    this.separatorTokens ??= this.counter.count("\n\n") + 1;
    return this.separatorTokens;
  }

  /**
   * The last section of the run of siblings that section `first` starts (or is in), looking no further than a unit
   * starting there can reach: every section after the first costs at least three tokens (one of its own and two of
   * separator allowance), so a unit never holds chunkSize sections and a run cut at first + chunkSize ends no unit early.
   */
  runEnd(first: number): number {
    const limit = Math.min(this.items.length - 1, first + this.chunkSize);
    let last = first;
    if (last < limit && isChild(this.items[first]!.section, this.items[first + 1]!.section)) last++;
    while (last < limit && siblings(this.items[last]!.section, this.items[last + 1]!.section)) last++;
    return last;
  }

  /** The last section of the unit that starts at section `first`. */
  unitEnd(first: number, runEnd: number): number {
    const size = this.size(first);
    if (size === undefined) return first;
    let total = size;
    let last = first;
    for (let next = first + 1; next <= runEnd; next++) {
      const add = this.size(next);
      if (add === undefined || total + this.separator + add > this.chunkSize) break;
      if (isAnchor(this.items[next]!.hash) && total >= this.chunkSize * FILL_BEFORE_ANCHOR) break;
      total += this.separator + add;
      last = next;
    }
    return last;
  }

  /** The chunks of the unit of sections first..last, as ranges of its text. */
  ranges(first: number, last: number): Range[] {
    const item = this.items[first]!;
    if (first === last) {
      const tokens = this.size(first);
      return tokens !== undefined ? [{ start: 0, end: item.text.length, tokens }] : chunkSection(item.text, this.counter, this.chunkSize, this.overlap);
    }
    const start = item.section.charStart;
    const whole = this.text.slice(start, this.items[last]!.section.charEnd);
    const tokens = this.counter.count(whole);
    if (tokens <= this.chunkSize) return [{ start: 0, end: whole.length, tokens }];
    // The boundaries took more than allowed: the longest runs of whole sections that fit, by exact count.
    const out: Range[] = [];
    for (let from = first; from <= last; ) {
      let to = from;
      let fits = this.size(from)!;
      for (; to < last; to++) {
        const n = this.counter.count(this.text.slice(this.items[from]!.section.charStart, this.items[to + 1]!.section.charEnd));
        if (n > this.chunkSize) break;
        fits = n;
      }
      out.push({ start: this.items[from]!.section.charStart - start, end: this.items[to]!.section.charEnd - start, tokens: fits });
      from = to + 1;
    }
    return out;
  }

  /** Records section `index`'s count, known from a verified previous chunk of exactly its text. */
  knowCount(index: number, tokens: number): void {
    this.counts.set(index, tokens);
  }

  /** A section's exact token count when it fits the budget alone; undefined when it does not. */
  private size(index: number): number | undefined {
    const item = this.items[index]!;
    if (item.text.length > this.chunkSize * MAX_CHARS_PER_TOKEN) return undefined;
    let n = this.counts.get(index);
    if (n === undefined) {
      n = this.counter.count(item.text);
      this.counts.set(index, n);
    }
    return n <= this.chunkSize ? n : undefined;
  }
}

/** Whether `b`, the next section with text after `a`, is its sibling: same level, same parent (headings only). */
function siblings(a: Section, b: Section): boolean {
  if (a.level === 0 || a.level !== b.level || a.headingPath.length !== b.headingPath.length) return false;
  for (let i = 0; i < a.headingPath.length - 1; i++) if (a.headingPath[i] !== b.headingPath[i]) return false;
  return true;
}

/** Whether `b`, the next section with text after `a`, is its direct child. */
function isChild(a: Section, b: Section): boolean {
  if (b.level <= a.level || b.headingPath.length !== a.headingPath.length + 1) return false;
  for (let i = 0; i < a.headingPath.length; i++) if (a.headingPath[i] !== b.headingPath[i]) return false;
  return true;
}

function isAnchor(hash: string): boolean {
  return Number.parseInt(hash.slice(0, 8), 16) % ANCHOR_EVERY === 0;
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
