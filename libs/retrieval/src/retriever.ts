/**
 * Retrieval over one collection's chunks, one implementation for every place that retrieves: the gateway answering
 * questions, and the dataset service building what a retriever would return (distractor contexts of unanswerable
 * examples, retrieved training contexts), so training sees the contexts serving will. `Retriever` is what they ask; `Bm25Retriever` answers it with Okapi
 * BM25 (k1 1.2, b 0.75) over the chunk text and its heading path (headings weigh 0.5×: the chunk text repeats its own
 * heading), tokenized by the technical tokenizer. An embedding retriever (or a hybrid) can take its place behind the
 * same interface.
 *
 * The index is this module's own inverted index: per term, its postings in each field and, computed once per index
 * version, its contribution per chunk over both fields in flat typed arrays (one entry per chunk, so a search adds one
 * number per chunk and term and counts the distinct terms a chunk matched without bookkeeping); the length norms are
 * computed once per change, scores accumulate in one typed array, the top k is selected without sorting every hit,
 * nothing is allocated per posting. A search visits the postings of the question's rarer terms and adds its frequent
 * terms (those in more than an eighth of the chunks, whose postings are most of the work) from dense arrays to the
 * chunks found, largest first, each time only to those that could still place (see #prune), falling back to every
 * posting when a chunk with only frequent terms could still place. MiniSearch was the first choice; tools/bench/gateway.ts measured it many times
 * slower than this index on the same chunks with the same scores, so ragtune keeps its own.
 */
import { technicalTerms } from "./technical-tokenizer.js";

/** A chunk as the index holds it (what a prompt and a citation need). */
export interface IndexedChunk {
  chunkId: string;
  documentId: string;
  headingPath: readonly string[];
  text: string;
  /** Position in its document (for a stable order of equal scores). */
  ordinal: number;
}

export interface RetrievedHit {
  chunk: IndexedChunk;
  /** Higher is more relevant; comparable within one search only. */
  score: number;
}

export interface Retriever {
  /** Replaces every chunk of a document by `chunks` (an empty list removes the document). */
  putDocument(documentId: string, chunks: readonly IndexedChunk[]): void;
  removeDocument(documentId: string): void;
  /** The `topK` best chunks for a question (of those `accept` allows), best first; empty when no term matches. */
  search(question: string, topK: number, accept?: (chunk: IndexedChunk) => boolean): RetrievedHit[];
  /** Chunks indexed. */
  readonly size: number;
}

const K1 = 1.2;
const B = 0.75;
/**
 * A term in more than this share of the chunks is frequent: a search first scores the chunks that match the question's
 * other terms and adds the frequent terms to those by a dense lookup, and visits the frequent terms' postings only when
 * a chunk matching nothing but frequent terms could still reach the top k (see searchRareFirst).
 */
const FREQUENT_SHARE = 1 / 8;
/** Below this many chunks every term's postings are visited (nothing to save). */
const RARE_FIRST_MIN_CHUNKS = 2048;
/** Dense arrays kept per field (the frequent terms questions use). */
const MAX_DENSE_TERMS = 64;

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A term's postings in one field: slot numbers (ascending) and term frequencies (parallel arrays). */
interface FieldPostings {
  slots: number[];
  tfs: number[];
  /** Postings whose slot holds a chunk. */
  live: number;
}

const NO_SLOTS = new Int32Array(0);
const NO_VALUES = new Float64Array(0);

/**
 * A term of the index: its postings per field, and what a search reads — its BM25 contribution per chunk over both
 * fields (text + heading path, each with its own IDF and length norm), one entry per chunk that holds it, slots
 * ascending. The contributions are computed once per index version rather than once per search: a search adds one
 * number per chunk, and counts each term once per chunk (the coordination factor needs the distinct terms matched).
 */
interface Term {
  fields: (FieldPostings | undefined)[];
  slots: Int32Array;
  values: Float64Array;
  /** The largest of `values`. */
  max: number;
  /** Index version of `slots` / `values`. */
  version: number;
  /** The contribution of every slot (0 where the term is absent), for frequent terms; see Bm25Retriever.#denseOf. */
  dense: Float64Array | undefined;
  denseVersion: number;
}

/** One searchable field's lengths and length norms. */
class Field {
  readonly lengths: number[] = [];
  totalLength = 0;
  /** Per slot, K1 · (1 − B + B · length / average length): the length part of a term's BM25 weight, for `normsVersion`. */
  norms = new Float64Array(0);
  normsVersion = -1;

  constructor(readonly boost: number) {}

  /**
   * The length norms of the first `slots` slots for the current lengths and `live` chunks, at index version `version`:
   * computed once after a change, not once per posting a search visits.
   */
  normsOf(slots: number, live: number, version: number): Float64Array {
    if (this.normsVersion === version && this.norms.length >= slots) return this.norms;
    if (this.norms.length < slots) this.norms = new Float64Array(Math.max(slots, this.norms.length * 2));
    const avg = this.totalLength / live || 1;
    const norms = this.norms;
    const lengths = this.lengths;
    for (let slot = 0; slot < slots; slot++) norms[slot] = K1 * (1 - B + (B * (lengths[slot] ?? 0)) / avg);
    this.normsVersion = version;
    return norms;
  }
}

export class Bm25Retriever implements Retriever {
  readonly #fields = [new Field(1), new Field(0.5)];
  readonly #terms = new Map<string, Term>();
  /** Bumped by every change: the length norms and contributions are computed for one version. */
  #version = 0;
  /** Chunk by slot; undefined for a removed one. */
  #slots: (IndexedChunk | undefined)[] = [];
  /** Per slot, the chunk's terms per field. */
  #slotTerms: (readonly (readonly string[])[] | undefined)[] = [];
  readonly #slotOf = new Map<string, number>();
  readonly #byDocument = new Map<string, string[]>();
  #live = 0;
  /** 1 for a slot holding a chunk, 0 for a removed one (postings of removed slots stay until compaction). */
  #alive = new Uint8Array(0);
  /** Frequent terms with a dense array, least recently used first (at most MAX_DENSE_TERMS). */
  readonly #dense = new Set<Term>();
  #scores = new Float64Array(0);
  /** Per slot during a search: the distinct question terms it matched (0: not touched yet). */
  #matched = new Uint16Array(0);
  /** The slots a search touched, in the order it first touched them (ties go to the first). */
  #touched = new Int32Array(0);
  /** The k best lower bounds during a rare-first search (see #prune). */
  #least = new Float64Array(0);

  /**
   * How searches went: answered from the rarer terms' postings, or by visiting every posting; and how many candidates
   * rare-first searches dropped before looking up their frequent terms (see #prune).
   */
  readonly searches = { rareFirst: 0, exhaustive: 0, dropped: 0 };
  readonly #rareFirst: boolean;

  /** `rareFirst: false` visits every posting of every question term (the reference the faster path is tested against). */
  constructor(options: { rareFirst?: boolean } = {}) {
    this.#rareFirst = options.rareFirst ?? true;
  }

  get size(): number {
    return this.#live;
  }

  putDocument(documentId: string, chunks: readonly IndexedChunk[]): void {
    // The document's chunks indexed now, with their terms: a changed document's kept chunks are not tokenized again.
    const indexed = new Map<string, { chunk: IndexedChunk; terms: readonly (readonly string[])[] }>();
    for (const id of this.#byDocument.get(documentId) ?? []) {
      const slot = this.#slotOf.get(id);
      if (slot !== undefined) indexed.set(id, { chunk: this.#slots[slot]!, terms: this.#slotTerms[slot]! });
    }
    this.removeDocument(documentId);
    if (chunks.length === 0) return;
    const ids: string[] = [];
    for (const chunk of chunks) {
      this.#discard(chunk.chunkId); // a chunk ID moved between documents
      const slot = this.#slots.length;
      const known = indexed.get(chunk.chunkId);
      const terms =
        known !== undefined && known.chunk.text === chunk.text && sameStrings(known.chunk.headingPath, chunk.headingPath)
          ? known.terms
          : [technicalTerms(chunk.text), technicalTerms(chunk.headingPath.join(" "))];
      this.#add(slot, terms);
      this.#slots.push(chunk);
      this.#slotTerms.push(terms);
      if (this.#alive.length <= slot) {
        const grown = new Uint8Array(Math.max(64, this.#alive.length * 2));
        grown.set(this.#alive);
        this.#alive = grown;
      }
      this.#alive[slot] = 1;
      this.#slotOf.set(chunk.chunkId, slot);
      this.#live++;
      ids.push(chunk.chunkId);
    }
    this.#byDocument.set(documentId, ids);
  }

  removeDocument(documentId: string): void {
    const ids = this.#byDocument.get(documentId);
    if (ids === undefined) return;
    for (const id of ids) this.#discard(id);
    this.#byDocument.delete(documentId);
    if (this.#slots.length > 64 && this.#live < this.#slots.length / 2) this.#compact();
  }

  /** Postings for a new slot's terms (per field), its field lengths. */
  #add(slot: number, terms: readonly (readonly string[])[]): void {
    this.#version++;
    this.#fields.forEach((field, f) => {
      const fieldTerms = terms[f]!;
      field.lengths[slot] = fieldTerms.length;
      field.totalLength += fieldTerms.length;
      const tf = new Map<string, number>();
      for (const t of fieldTerms) tf.set(t, (tf.get(t) ?? 0) + 1);
      for (const [t, n] of tf) {
        let term = this.#terms.get(t);
        if (term === undefined) {
          term = { fields: [undefined, undefined], slots: NO_SLOTS, values: NO_VALUES, max: 0, version: -1, dense: undefined, denseVersion: -1 };
          this.#terms.set(t, term);
        }
        const p = (term.fields[f] ??= { slots: [], tfs: [], live: 0 });
        p.slots.push(slot);
        p.tfs.push(n);
        p.live++;
      }
    });
  }

  #discard(chunkId: string): void {
    const slot = this.#slotOf.get(chunkId);
    if (slot === undefined) return;
    this.#version++;
    const terms = this.#slotTerms[slot]!;
    // The slot's postings stay (skipped: the slot is empty) until the next compaction; a term no live chunk holds goes.
    this.#fields.forEach((field, f) => {
      field.totalLength -= field.lengths[slot] ?? 0;
      field.lengths[slot] = 0;
      for (const t of new Set(terms[f])) {
        const term = this.#terms.get(t);
        const p = term?.fields[f];
        if (term === undefined || p === undefined || --p.live > 0) continue;
        term.fields[f] = undefined;
        if (term.fields.every((x) => x === undefined)) this.#forget(t, term);
      }
    });
    this.#slots[slot] = undefined;
    this.#slotTerms[slot] = undefined;
    this.#alive[slot] = 0;
    this.#slotOf.delete(chunkId);
    this.#live--;
  }

  #forget(t: string, term: Term): void {
    this.#terms.delete(t);
    this.#dense.delete(term);
  }

  /**
   * Drops the removed slots: the live ones are renumbered in order and every posting list is filtered in place (no
   * chunk is tokenized or counted again). Postings keep their order; lengths follow their slots.
   */
  #compact(): void {
    this.#version++;
    const slotOf = new Int32Array(this.#slots.length).fill(-1);
    const slots: IndexedChunk[] = [];
    const slotTerms: (readonly (readonly string[])[])[] = [];
    this.#slots.forEach((chunk, old) => {
      if (chunk === undefined) return;
      slotOf[old] = slots.length;
      this.#slotOf.set(chunk.chunkId, slots.length);
      slots.push(chunk);
      slotTerms.push(this.#slotTerms[old]!);
    });
    for (const [t, term] of this.#terms) {
      for (let f = 0; f < term.fields.length; f++) {
        const p = term.fields[f];
        if (p === undefined) continue;
        let kept = 0;
        for (let i = 0; i < p.slots.length; i++) {
          const slot = slotOf[p.slots[i]!]!;
          if (slot < 0) continue;
          p.slots[kept] = slot;
          p.tfs[kept] = p.tfs[i]!;
          kept++;
        }
        p.slots.length = kept;
        p.tfs.length = kept;
        p.live = kept;
        if (kept === 0) term.fields[f] = undefined;
      }
      term.slots = NO_SLOTS;
      term.values = NO_VALUES;
      term.dense = undefined;
      if (term.fields.every((x) => x === undefined)) this.#forget(t, term);
    }
    this.#dense.clear();
    for (const field of this.#fields) {
      const lengths = new Array<number>(slots.length).fill(0);
      for (let old = 0; old < field.lengths.length; old++) if (slotOf[old]! >= 0) lengths[slotOf[old]!] = field.lengths[old]!;
      field.lengths.length = 0;
      for (const length of lengths) field.lengths.push(length);
    }
    this.#slots = slots;
    this.#slotTerms = slotTerms;
    this.#alive.fill(0);
    this.#alive.fill(1, 0, slots.length);
  }

  /**
   * A term's contributions for the current index version: per field, weight · tf · (K1 + 1) / (tf + norm), the
   * fields' postings merged by slot (both ascending) into one sum per chunk; removed slots left out.
   */
  #contributions(term: Term): Term {
    if (term.version === this.#version) return term;
    const n = this.#slots.length;
    const live = this.#live;
    const alive = this.#alive;
    const [text, heading] = term.fields;
    const parts = this.#fields.map((field, f) => {
      const p = term.fields[f];
      if (p === undefined) return undefined;
      return { p, weight: field.boost * Math.log(1 + (live - p.live + 0.5) / (p.live + 0.5)), norms: field.normsOf(n, live, this.#version) };
    });
    const capacity = (text?.live ?? 0) + (heading?.live ?? 0);
    const slots = term.slots.length >= capacity ? term.slots : new Int32Array(capacity);
    const values = term.values.length >= capacity ? term.values : new Float64Array(capacity);
    const a = parts[0];
    const b = parts[1];
    const aSlots = a?.p.slots ?? [];
    const bSlots = b?.p.slots ?? [];
    let i = 0;
    let j = 0;
    let count = 0;
    let max = 0;
    while (i < aSlots.length || j < bSlots.length) {
      const sa = i < aSlots.length ? aSlots[i]! : Infinity;
      const sb = j < bSlots.length ? bSlots[j]! : Infinity;
      const slot = sa < sb ? sa : sb;
      let v = 0;
      if (sa === slot) {
        const tf = a!.p.tfs[i++]!;
        v += (a!.weight * tf * (K1 + 1)) / (tf + a!.norms[slot]!);
      }
      if (sb === slot) {
        const tf = b!.p.tfs[j++]!;
        v += (b!.weight * tf * (K1 + 1)) / (tf + b!.norms[slot]!);
      }
      if (alive[slot] === 0) continue;
      slots[count] = slot;
      values[count] = v;
      count++;
      if (v > max) max = v;
    }
    term.slots = count === slots.length ? slots : slots.subarray(0, count);
    term.values = count === values.length ? values : values.subarray(0, count);
    term.max = max;
    term.version = this.#version;
    return term;
  }

  /**
   * A frequent term's contribution for every slot (0 where it does not occur or the slot is empty): computed once per
   * index version and term, then read in O(1) per slot. Kept for the MAX_DENSE_TERMS terms used last.
   */
  #denseOf(term: Term): Float64Array {
    const n = this.#slots.length;
    this.#dense.delete(term);
    this.#dense.add(term);
    if (term.dense !== undefined && term.denseVersion === this.#version && term.dense.length >= n) return term.dense;
    const dense = term.dense !== undefined && term.dense.length >= n ? term.dense.fill(0) : new Float64Array(n);
    const { slots, values } = term;
    for (let i = 0; i < slots.length; i++) dense[slots[i]!] = values[i]!;
    term.dense = dense;
    term.denseVersion = this.#version;
    if (this.#dense.size > MAX_DENSE_TERMS) {
      const oldest = this.#dense.values().next().value!;
      this.#dense.delete(oldest);
      oldest.dense = undefined;
    }
    return dense;
  }

  search(question: string, topK: number, accept?: (chunk: IndexedChunk) => boolean): RetrievedHit[] {
    if (topK <= 0 || this.#live === 0) return [];
    const n = this.#slots.length;
    if (this.#scores.length < n) {
      const size = Math.max(n, this.#scores.length * 2);
      this.#scores = new Float64Array(size);
      this.#matched = new Uint16Array(size);
      this.#touched = new Int32Array(size);
    }
    // The question's terms the index holds, each once (at most 65,535: the per-slot count is 16 bits).
    const terms: Term[] = [];
    for (const t of new Set(technicalTerms(question))) {
      const term = this.#terms.get(t);
      if (term === undefined) continue;
      const c = this.#contributions(term);
      if (c.slots.length > 0 && terms.push(c) === 0xffff) break;
    }
    if (terms.length === 0) return [];
    if (this.#rareFirst && this.#live >= RARE_FIRST_MIN_CHUNKS) {
      const hits = this.#searchRareFirst(terms, topK, accept);
      if (hits !== undefined) {
        this.searches.rareFirst++;
        return hits;
      }
    }
    this.searches.exhaustive++;
    return this.#searchAll(terms, topK, accept);
  }

  /** Every posting of every question term: each matching chunk's exact score. */
  #searchAll(terms: readonly Term[], topK: number, accept: ((chunk: IndexedChunk) => boolean) | undefined): RetrievedHit[] {
    const scores = this.#scores;
    const matched = this.#matched;
    const touched = this.#touched;
    let touchedCount = 0;
    for (const { slots, values } of terms) {
      for (let i = 0; i < slots.length; i++) {
        const slot = slots[i]!;
        if (matched[slot] === 0) touched[touchedCount++] = slot;
        matched[slot]!++;
        scores[slot] += values[i]!;
      }
    }
    return this.#finish(touchedCount, topK, accept);
  }

  /**
   * The same scores, visiting fewer postings: the postings of the question's rarer terms make the candidates (every
   * chunk that matches one of them); the frequent terms (FREQUENT_SHARE), largest contribution first, are added to the
   * candidates from their dense arrays, each after dropping the candidates the terms still to add could not lift into
   * the top k (#prune); and the result stands when its k-th score is above the most a chunk matching only frequent
   * terms could score (their number × the sum of their largest contributions). Otherwise undefined: the caller visits
   * everything.
   */
  #searchRareFirst(terms: readonly Term[], topK: number, accept: ((chunk: IndexedChunk) => boolean) | undefined): RetrievedHit[] | undefined {
    const scores = this.#scores;
    const matched = this.#matched;
    const touched = this.#touched;
    const frequentLimit = this.#live * FREQUENT_SHARE;
    let touchedCount = 0;
    const frequent: Term[] = [];
    let frequentMax = 0;
    for (const term of terms) {
      const { slots, values } = term;
      if (slots.length > frequentLimit) {
        frequent.push(term);
        frequentMax += term.max;
        continue;
      }
      for (let i = 0; i < slots.length; i++) {
        const slot = slots[i]!;
        if (matched[slot] === 0) touched[touchedCount++] = slot;
        matched[slot]!++;
        scores[slot] += values[i]!;
      }
    }
    frequent.sort((x, y) => y.max - x.max);
    let restMax = frequentMax;
    for (let f = 0; f < frequent.length; f++) {
      const term = frequent[f]!;
      if (accept === undefined && touchedCount > topK) touchedCount = this.#prune(touchedCount, topK, frequent.length - f, restMax);
      restMax -= term.max;
      const dense = this.#denseOf(term);
      for (let t = 0; t < touchedCount; t++) {
        const slot = touched[t]!;
        const v = dense[slot]!;
        if (v !== 0) {
          scores[slot] += v;
          matched[slot]!++;
        }
      }
    }
    const bound = frequent.length * frequentMax;
    return this.#finish(touchedCount, topK, accept, (kth) => frequent.length === 0 || kth > bound);
  }

  /**
   * Drops the candidates that the `rest` frequent terms still to add (their largest contributions summing to
   * `restMax`) cannot lift into the top k: a candidate's score is at least its sum so far × its terms so far and at
   * most (that sum + restMax) × (its terms + rest); one whose most is below the k-th best least cannot place. The
   * survivors keep their order (ties go to the slot touched first); the dropped are reset. Returns how many survive
   * (they are the first entries of `touched`).
   */
  #prune(touchedCount: number, topK: number, rest: number, restMax: number): number {
    const scores = this.#scores;
    const matched = this.#matched;
    const touched = this.#touched;
    // The k best least scores, best first.
    const least = this.#least.length >= topK ? this.#least : (this.#least = new Float64Array(topK));
    least.fill(0, 0, topK);
    for (let t = 0; t < touchedCount; t++) {
      const slot = touched[t]!;
      const s = scores[slot]! * matched[slot]!;
      if (s <= least[topK - 1]!) continue;
      let i = topK - 1;
      while (i > 0 && least[i - 1]! < s) {
        least[i] = least[i - 1]!;
        i--;
      }
      least[i] = s;
    }
    // Below this no candidate can place (with room for the rounding of sums taken in another order).
    const cut = least[topK - 1]! * (1 - 1e-12);
    if (cut <= 0) return touchedCount;
    let kept = 0;
    for (let t = 0; t < touchedCount; t++) {
      const slot = touched[t]!;
      if ((scores[slot]! + restMax) * (matched[slot]! + rest) >= cut) touched[kept++] = slot;
      else {
        scores[slot] = 0;
        matched[slot] = 0;
      }
    }
    this.searches.dropped += touchedCount - kept;
    return kept;
  }

  /**
   * Each touched slot's score times the number of distinct question terms it matched (a coordination factor, as
   * MiniSearch weighs its results: it measured better on the dataset's questions than the plain sum), the top k of
   * them, and the per-slot state reset. `exact(kth)` (the k-th score, or 0 when fewer than k) says whether they stand;
   * undefined when not.
   */
  #finish(touchedCount: number, topK: number, accept: ((chunk: IndexedChunk) => boolean) | undefined): RetrievedHit[];
  #finish(touchedCount: number, topK: number, accept: ((chunk: IndexedChunk) => boolean) | undefined, exact: (kth: number) => boolean): RetrievedHit[] | undefined;
  #finish(touchedCount: number, topK: number, accept: ((chunk: IndexedChunk) => boolean) | undefined, exact?: (kth: number) => boolean): RetrievedHit[] | undefined {
    const scores = this.#scores;
    const matched = this.#matched;
    const touched = this.#touched;
    for (let t = 0; t < touchedCount; t++) scores[touched[t]!]! *= matched[touched[t]!]!;
    const best = this.#best(touchedCount, topK, accept);
    const stands = exact === undefined || exact(best.length === topK ? scores[best[topK - 1]!]! : 0);
    const hits = stands ? best.map((slot) => ({ chunk: this.#slots[slot]!, score: scores[slot]! })) : undefined;
    for (let t = 0; t < touchedCount; t++) {
      const slot = touched[t]!;
      scores[slot] = 0;
      matched[slot] = 0;
    }
    return hits;
  }

  /** The top k of the touched slots by a bounded insertion (k is small); ties go to the slot touched first. */
  #best(touchedCount: number, topK: number, accept: ((chunk: IndexedChunk) => boolean) | undefined): number[] {
    const scores = this.#scores;
    const touched = this.#touched;
    const best: number[] = [];
    for (let t = 0; t < touchedCount; t++) {
      const slot = touched[t]!;
      const s = scores[slot]!;
      if (best.length === topK && s <= scores[best[topK - 1]!]!) continue;
      if (accept !== undefined && !accept(this.#slots[slot]!)) continue;
      let i = best.length === topK ? topK - 1 : best.length;
      while (i > 0 && scores[best[i - 1]!]! < s) {
        best[i] = best[i - 1]!;
        i--;
      }
      best[i] = slot;
    }
    return best;
  }
}
