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
 * sorting every hit, no allocation per posting). MiniSearch was the first choice; tools/bench/gateway.ts measured it many times
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

/** One searchable field: postings per term (slot numbers and term frequencies, parallel arrays) and field lengths. */
class Field {
  readonly postings = new Map<string, { slots: number[]; tfs: number[]; live: number }>();
  readonly lengths: number[] = [];
  totalLength = 0;
  /** Bumped by every change: the length norms below are for one version. */
  version = 0;
  /** Per slot, K1 · (1 − B + B · length / average length): the length part of a term's BM25 weight, for `normsVersion`. */
  norms = new Float64Array(0);
  normsVersion = -1;

  constructor(readonly boost: number) {}

  add(slot: number, terms: readonly string[]): void {
    this.version++;
    this.lengths[slot] = terms.length;
    this.totalLength += terms.length;
    const tf = new Map<string, number>();
    for (const t of terms) tf.set(t, (tf.get(t) ?? 0) + 1);
    for (const [term, n] of tf) {
      let p = this.postings.get(term);
      if (p === undefined) this.postings.set(term, (p = { slots: [], tfs: [], live: 0 }));
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

  clear(): void {
    this.version++;
    this.postings.clear();
    this.lengths.length = 0;
    this.totalLength = 0;
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

  get size(): number {
    return this.#live;
  }

  putDocument(documentId: string, chunks: readonly IndexedChunk[]): void {
    this.removeDocument(documentId);
    if (chunks.length === 0) return;
    const ids: string[] = [];
    for (const chunk of chunks) {
      this.#discard(chunk.chunkId); // a chunk ID moved between documents
      const slot = this.#slots.length;
      const terms = [technicalTerms(chunk.text), technicalTerms(chunk.headingPath.join(" "))];
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

  /** Rebuilds the postings without the removed slots. */
  #compact(): void {
    const chunks = this.#slots.filter((c): c is IndexedChunk => c !== undefined);
    const documents = [...this.#byDocument];
    this.#slots = [];
    this.#terms = [];
    this.#slotOf.clear();
    this.#byDocument.clear();
    this.#live = 0;
    for (const f of this.#fields) f.clear();
    this.#alive.fill(0);
    const byId = new Map(chunks.map((c) => [c.chunkId, c]));
    for (const [documentId, ids] of documents) this.putDocument(documentId, ids.map((id) => byId.get(id)!));
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
    }
    const scores = this.#scores;
    const matched = this.#matched;
    const stamp = this.#stamp;
    const touched = this.#touched;
    const alive = this.#alive;
    let touchedCount = 0;
    let termNumber = 0;
    for (const term of new Set(technicalTerms(question))) {
      termNumber++;
      for (const field of this.#fields) {
        const p = field.postings.get(term);
        if (p === undefined) continue;
        const idf = Math.log(1 + (this.#live - p.live + 0.5) / (p.live + 0.5));
        const norms = field.normsOf(n, this.#live);
        const weight = field.boost * idf;
        const slots = p.slots;
        const tfs = p.tfs;
        for (let i = 0; i < slots.length; i++) {
          const slot = slots[i]!;
          if (alive[slot] === 0) continue;
          const tf = tfs[i]!;
          if (stamp[slot] !== termNumber) {
            if (stamp[slot] === 0) touched[touchedCount++] = slot;
            stamp[slot] = termNumber;
            matched[slot]!++;
          }
          scores[slot] += (weight * tf * (K1 + 1)) / (tf + norms[slot]!);
        }
      }
    }
    // Each score times the number of distinct question terms the chunk matched (a coordination factor, as MiniSearch
    // weighs its results: it measured better on the dataset's questions than the plain sum).
    for (let t = 0; t < touchedCount; t++) scores[touched[t]!]! *= matched[touched[t]!]!;
    // The top k by a bounded insertion (k is small), ties by position: earlier chunk first.
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
    const hits = best.map((slot) => ({ chunk: this.#slots[slot]!, score: scores[slot]! }));
    for (let t = 0; t < touchedCount; t++) {
      const slot = touched[t]!;
      scores[slot] = 0;
      matched[slot] = 0;
      stamp[slot] = 0;
    }
    return hits;
  }
}
