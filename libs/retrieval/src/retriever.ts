/**
 * Retrieval over one collection's chunks, one implementation for every place that retrieves: the gateway answering
 * questions, and the dataset service building what a retriever would return (distractor contexts of unanswerable
 * examples, retrieved training contexts), so training sees the contexts serving will. `Retriever` is what they ask; `Bm25Retriever` answers it with Okapi
 * BM25 (k1 1.2, b 0.75) over the chunk text and its heading path (headings weigh 0.5×: the chunk text repeats its own
 * heading), tokenized by the technical tokenizer. An embedding retriever (or a hybrid) can take its place behind the
 * same interface.
 *
 * The index is this module's own inverted index (postings in flat arrays, scores accumulated in one typed array, each
 * slot's length norm computed once per change rather than once per posting visited, the top k selected without
 * sorting every hit, no allocation per posting, each posting's BM25 contribution computed once per index version and
 * term rather than once per search). A search visits the postings of the question's rarer terms and adds
 * its frequent terms (those in more than an eighth of the chunks, whose postings are most of the work) from dense
 * arrays to the chunks found (only to those that could still place: see #prune), falling back to every posting when a chunk with only frequent terms could still place. MiniSearch was the first choice; tools/bench/gateway.ts measured it many times
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

/** Bits set in a 32-bit word. */
function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A term's postings in one field: slot numbers and term frequencies (parallel arrays). */
interface Postings {
  slots: number[];
  tfs: number[];
  /** Postings whose slot holds a chunk. */
  live: number;
  /** Per posting, its BM25 contribution (0 for a removed slot), for field version `version`; see Field.contributions. */
  values: Float64Array;
  version: number;
  /** The largest of `values`. */
  max: number;
}

const NO_VALUES = new Float64Array(0);

/** One searchable field: postings per term and field lengths. */
class Field {
  readonly postings = new Map<string, Postings>();
  readonly lengths: number[] = [];
  totalLength = 0;
  /** Bumped by every change: the length norms and contributions below are for one version. */
  version = 0;
  /** Per slot, K1 · (1 − B + B · length / average length): the length part of a term's BM25 weight, for `normsVersion`. */
  norms = new Float64Array(0);
  normsVersion = -1;

  /** Dense per-slot contributions of frequent terms (see denseOf), for one field version each. */
  readonly #dense = new Map<string, { version: number; values: Float64Array; max: number }>();

  constructor(readonly boost: number) {}

  /**
   * The BM25 contribution of each of a term's postings (weight · tf · (K1 + 1) / (tf + norm); 0 for a removed slot),
   * computed once per version of the field and term rather than once per search: a search then adds one number per
   * posting. The first `slots` slots, `live` chunks.
   */
  contributions(p: Postings, slots: number, live: number, alive: Uint8Array): Postings {
    if (p.version === this.version) return p;
    const norms = this.normsOf(slots, live);
    const weight = this.boost * Math.log(1 + (live - p.live + 0.5) / (p.live + 0.5));
    const n = p.slots.length;
    const values = p.values.length === n ? p.values : new Float64Array(n);
    let max = 0;
    for (let i = 0; i < n; i++) {
      const slot = p.slots[i]!;
      if (alive[slot] === 0) {
        values[i] = 0;
        continue;
      }
      const tf = p.tfs[i]!;
      const v = (weight * tf * (K1 + 1)) / (tf + norms[slot]!);
      values[i] = v;
      if (v > max) max = v;
    }
    p.values = values;
    p.max = max;
    p.version = this.version;
    return p;
  }

  /**
   * A frequent term's contribution for every slot (0 where it does not occur or the slot is empty) and its largest
   * value: computed once per version of the field and term, then read in O(1) per slot.
   */
  denseOf(term: string, p: Postings, slots: number): { values: Float64Array; max: number } {
    const cached = this.#dense.get(term);
    if (cached !== undefined && cached.version === this.version && cached.values.length >= slots) return cached;
    const values = cached !== undefined && cached.values.length >= slots ? cached.values.fill(0) : new Float64Array(slots);
    const contributions = p.values;
    for (let i = 0; i < p.slots.length; i++) values[p.slots[i]!] = contributions[i]!;
    const entry = { version: this.version, values, max: p.max };
    this.#dense.delete(term);
    this.#dense.set(term, entry);
    if (this.#dense.size > MAX_DENSE_TERMS) this.#dense.delete(this.#dense.keys().next().value!);
    return entry;
  }

  add(slot: number, terms: readonly string[]): void {
    this.version++;
    this.lengths[slot] = terms.length;
    this.totalLength += terms.length;
    const tf = new Map<string, number>();
    for (const t of terms) tf.set(t, (tf.get(t) ?? 0) + 1);
    for (const [term, n] of tf) {
      let p = this.postings.get(term);
      if (p === undefined) this.postings.set(term, (p = { slots: [], tfs: [], live: 0, values: NO_VALUES, version: -1, max: 0 }));
      p.slots.push(slot);
      p.tfs.push(n);
      p.live++;
    }
  }

  /** Forgets a slot's length; its postings are skipped (the slot is empty) until the next compaction. */
  remove(slot: number, terms: readonly string[]): void {
    this.version++;
    this.totalLength -= this.lengths[slot] ?? 0;
    this.lengths[slot] = 0;
    for (const term of new Set(terms)) {
      const p = this.postings.get(term);
      if (p !== undefined && --p.live === 0) this.postings.delete(term);
    }
  }

  /**
   * Renumbers the slots after a compaction: `slotOf[old]` is a slot's new number, −1 for a removed one (whose postings
   * go). Postings keep their order; lengths follow their slots.
   */
  compact(slotOf: Int32Array, slots: number): void {
    this.version++;
    this.#dense.clear();
    for (const [term, p] of this.postings) {
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
      p.values = NO_VALUES;
      p.version = -1;
      if (kept === 0) this.postings.delete(term);
    }
    const lengths = new Array<number>(slots).fill(0);
    for (let old = 0; old < this.lengths.length; old++) if (slotOf[old]! >= 0) lengths[slotOf[old]!] = this.lengths[old]!;
    this.lengths.length = 0;
    for (const length of lengths) this.lengths.push(length);
  }

  /**
   * The length norms of the first `slots` slots for the current lengths and `live` chunks: computed once after a
   * change, not once per posting a search visits.
   */
  normsOf(slots: number, live: number): Float64Array {
    if (this.normsVersion === this.version && this.norms.length >= slots) return this.norms;
    if (this.norms.length < slots) this.norms = new Float64Array(Math.max(slots, this.norms.length * 2));
    const avg = this.totalLength / live || 1;
    const norms = this.norms;
    const lengths = this.lengths;
    for (let slot = 0; slot < slots; slot++) norms[slot] = K1 * (1 - B + (B * (lengths[slot] ?? 0)) / avg);
    this.normsVersion = this.version;
    return norms;
  }
}

export class Bm25Retriever implements Retriever {
  readonly #fields = [new Field(1), new Field(0.5)];
  /** Chunk by slot; undefined for a removed one. */
  #slots: (IndexedChunk | undefined)[] = [];
  #terms: (readonly (readonly string[])[] | undefined)[] = [];
  readonly #slotOf = new Map<string, number>();
  readonly #byDocument = new Map<string, string[]>();
  #live = 0;
  /** 1 for a slot holding a chunk, 0 for a removed one (postings of removed slots stay until compaction). */
  #alive = new Uint8Array(0);
  #scores = new Float64Array(0);
  /** Per slot during a search: distinct query terms matched, and the last term (its number + 1) that matched. */
  #matched = new Uint16Array(0);
  #stamp = new Int32Array(0);
  /** The slots a search touched, in the order it first touched them (ties go to the first). */
  #touched = new Int32Array(0);
  /** Per slot during a rare-first search: the question terms (bit per term) it matched. */
  #mask = new Uint32Array(0);
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
      if (slot !== undefined) indexed.set(id, { chunk: this.#slots[slot]!, terms: this.#terms[slot]! });
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
      this.#fields.forEach((f, i) => f.add(slot, terms[i]!));
      this.#slots.push(chunk);
      this.#terms.push(terms);
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

  #discard(chunkId: string): void {
    const slot = this.#slotOf.get(chunkId);
    if (slot === undefined) return;
    const terms = this.#terms[slot]!;
    this.#fields.forEach((f, i) => f.remove(slot, terms[i]!));
    this.#slots[slot] = undefined;
    this.#terms[slot] = undefined;
    this.#alive[slot] = 0;
    this.#slotOf.delete(chunkId);
    this.#live--;
  }

  /**
   * Drops the removed slots: the live ones are renumbered in order and every posting list is filtered in place (no
   * chunk is tokenized or counted again).
   */
  #compact(): void {
    const slotOf = new Int32Array(this.#slots.length).fill(-1);
    const slots: IndexedChunk[] = [];
    const terms: (readonly (readonly string[])[])[] = [];
    this.#slots.forEach((chunk, old) => {
      if (chunk === undefined) return;
      slotOf[old] = slots.length;
      this.#slotOf.set(chunk.chunkId, slots.length);
      slots.push(chunk);
      terms.push(this.#terms[old]!);
    });
    for (const f of this.#fields) f.compact(slotOf, slots.length);
    this.#slots = slots;
    this.#terms = terms;
    this.#alive.fill(0);
    this.#alive.fill(1, 0, slots.length);
  }

  search(question: string, topK: number, accept?: (chunk: IndexedChunk) => boolean): RetrievedHit[] {
    if (topK <= 0 || this.#live === 0) return [];
    const n = this.#slots.length;
    if (this.#scores.length < n) {
      const size = Math.max(n, this.#scores.length * 2);
      this.#scores = new Float64Array(size);
      this.#matched = new Uint16Array(size);
      this.#stamp = new Int32Array(size);
      this.#touched = new Int32Array(size);
      this.#mask = new Uint32Array(size);
    }
    const terms = [...new Set(technicalTerms(question))];
    if (this.#rareFirst && this.#live >= RARE_FIRST_MIN_CHUNKS && terms.length <= 32) {
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
  #searchAll(terms: readonly string[], topK: number, accept: ((chunk: IndexedChunk) => boolean) | undefined): RetrievedHit[] {
    const n = this.#slots.length;
    const scores = this.#scores;
    const matched = this.#matched;
    const stamp = this.#stamp;
    const touched = this.#touched;
    const alive = this.#alive;
    let touchedCount = 0;
    let termNumber = 0;
    for (const term of terms) {
      termNumber++;
      for (const field of this.#fields) {
        const found = field.postings.get(term);
        if (found === undefined) continue;
        const p = field.contributions(found, n, this.#live, alive);
        const slots = p.slots;
        const values = p.values;
        for (let i = 0; i < slots.length; i++) {
          const v = values[i]!;
          if (v === 0) continue; // a removed slot
          const slot = slots[i]!;
          if (stamp[slot] !== termNumber) {
            if (stamp[slot] === 0) touched[touchedCount++] = slot;
            stamp[slot] = termNumber;
            matched[slot]!++;
          }
          scores[slot] += v;
        }
      }
    }
    // Each score times the number of distinct question terms the chunk matched (a coordination factor, as MiniSearch
    // weighs its results: it measured better on the dataset's questions than the plain sum).
    for (let t = 0; t < touchedCount; t++) scores[touched[t]!]! *= matched[touched[t]!]!;
    const best = this.#best(touchedCount, topK, accept);
    const hits = best.map((slot) => ({ chunk: this.#slots[slot]!, score: scores[slot]! }));
    for (let t = 0; t < touchedCount; t++) {
      const slot = touched[t]!;
      scores[slot] = 0;
      matched[slot] = 0;
      stamp[slot] = 0;
    }
    return hits;
  }

  /**
   * The same scores, visiting fewer postings: the postings of the question's rarer terms make the candidates (every
   * chunk that matches one of them), the frequent terms (FREQUENT_SHARE) are added to the candidates from their dense
   * arrays, and the result stands when its k-th score is above the most a chunk matching only frequent terms could
   * score (their number × the sum of their largest contributions). Otherwise undefined: the caller visits everything.
   */
  #searchRareFirst(terms: readonly string[], topK: number, accept: ((chunk: IndexedChunk) => boolean) | undefined): RetrievedHit[] | undefined {
    const n = this.#slots.length;
    const live = this.#live;
    const scores = this.#scores;
    const mask = this.#mask;
    const touched = this.#touched;
    const alive = this.#alive;
    let touchedCount = 0;
    const frequent: { bit: number; values: Float64Array }[] = [];
    let frequentBits = 0;
    let frequentMax = 0;
    for (let j = 0; j < terms.length; j++) {
      const bit = (1 << j) >>> 0;
      for (const field of this.#fields) {
        const found = field.postings.get(terms[j]!);
        if (found === undefined) continue;
        const p = field.contributions(found, n, live, alive);
        if (p.live > live * FREQUENT_SHARE) {
          const dense = field.denseOf(terms[j]!, p, n);
          frequent.push({ bit, values: dense.values });
          frequentBits |= bit;
          frequentMax += dense.max;
          continue;
        }
        const slots = p.slots;
        const values = p.values;
        for (let i = 0; i < slots.length; i++) {
          const v = values[i]!;
          if (v === 0) continue; // a removed slot
          const slot = slots[i]!;
          if (mask[slot] === 0) touched[touchedCount++] = slot;
          mask[slot]! |= bit;
          scores[slot] += v;
        }
      }
    }
    if (frequent.length > 0 && accept === undefined && touchedCount > topK) touchedCount = this.#prune(touchedCount, topK, frequentBits, frequentMax);
    for (const { bit, values } of frequent) {
      for (let t = 0; t < touchedCount; t++) {
        const slot = touched[t]!;
        const v = values[slot]!;
        if (v !== 0) {
          scores[slot] += v;
          mask[slot]! |= bit;
        }
      }
    }
    for (let t = 0; t < touchedCount; t++) scores[touched[t]!]! *= popcount(mask[touched[t]!]!);
    const best = this.#best(touchedCount, topK, accept);
    const bound = popcount(frequentBits) * frequentMax;
    const exact = frequent.length === 0 || (best.length === topK && scores[best[topK - 1]!]! > bound);
    const hits = exact ? best.map((slot) => ({ chunk: this.#slots[slot]!, score: scores[slot]! })) : undefined;
    for (let t = 0; t < touchedCount; t++) {
      const slot = touched[t]!;
      scores[slot] = 0;
      mask[slot] = 0;
    }
    return hits;
  }

  /**
   * Drops the candidates the frequent terms cannot lift into the top k, before their dense lookups: a candidate's
   * score is at least its rare terms' sum × their number (what it has now) and at most (that sum + the frequent terms'
   * largest contributions) × (its terms and all frequent ones); one whose most is below the k-th best least cannot
   * place. The survivors keep their order (ties go to the slot touched first); the dropped are reset. Returns how
   * many survive (they are the first entries of `touched`).
   */
  #prune(touchedCount: number, topK: number, frequentBits: number, frequentMax: number): number {
    const scores = this.#scores;
    const mask = this.#mask;
    const touched = this.#touched;
    // The k best least scores, best first.
    const least = this.#least.length >= topK ? this.#least : (this.#least = new Float64Array(topK));
    least.fill(0, 0, topK);
    for (let t = 0; t < touchedCount; t++) {
      const slot = touched[t]!;
      const s = scores[slot]! * popcount(mask[slot]!);
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
      if ((scores[slot]! + frequentMax) * popcount(mask[slot]! | frequentBits) >= cut) touched[kept++] = slot;
      else {
        scores[slot] = 0;
        mask[slot] = 0;
      }
    }
    this.searches.dropped += touchedCount - kept;
    return kept;
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
