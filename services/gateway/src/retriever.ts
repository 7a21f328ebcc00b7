/**
 * Retrieval over one collection's chunks. `Retriever` is what the gateway asks; `Bm25Retriever` answers it with
 * MiniSearch's BM25+ over the chunk text and its heading path, tokenized by the technical tokenizer. An embedding
 * retriever (or a hybrid) can take its place behind the same interface.
 */
import MiniSearch from "minisearch";
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
  /** The `topK` best chunks for a question, best first; empty when no term matches. */
  search(question: string, topK: number): RetrievedHit[];
  /** Chunks indexed. */
  readonly size: number;
}

interface IndexRow {
  id: string;
  text: string;
  headings: string;
}

/**
 * Okapi BM25 (k1 1.2, b 0.75; MiniSearch's BM25+ delta set to 0) over the chunk text and its heading path (headings
 * weigh 0.5×: the chunk text repeats its own heading). Those settings measured best on the dataset's questions
 * (tools/bench/gateway.ts).
 */
export class Bm25Retriever implements Retriever {
  readonly #index = new MiniSearch<IndexRow>({
    idField: "id",
    fields: ["text", "headings"],
    tokenize: (text) => technicalTerms(text),
    processTerm: (term) => term,
    // A question's terms once each: MiniSearch searches every query term separately, and the tokenizer repeats terms.
    searchOptions: { boost: { headings: 0.5 }, bm25: { k: 1.2, b: 0.75, d: 0 }, combineWith: "OR", tokenize: (text) => [...new Set(technicalTerms(text))] },
  });
  readonly #chunks = new Map<string, IndexedChunk>();
  readonly #byDocument = new Map<string, string[]>();

  get size(): number {
    return this.#chunks.size;
  }

  putDocument(documentId: string, chunks: readonly IndexedChunk[]): void {
    this.removeDocument(documentId);
    if (chunks.length === 0) return;
    const ids: string[] = [];
    for (const chunk of chunks) {
      if (this.#chunks.has(chunk.chunkId)) this.#discard(chunk.chunkId); // a chunk ID moved between documents
      this.#index.add({ id: chunk.chunkId, text: chunk.text, headings: chunk.headingPath.join(" ") });
      this.#chunks.set(chunk.chunkId, chunk);
      ids.push(chunk.chunkId);
    }
    this.#byDocument.set(documentId, ids);
  }

  removeDocument(documentId: string): void {
    const ids = this.#byDocument.get(documentId);
    if (ids === undefined) return;
    for (const id of ids) this.#discard(id);
    this.#byDocument.delete(documentId);
  }

  #discard(chunkId: string): void {
    if (!this.#chunks.has(chunkId)) return;
    this.#index.discard(chunkId);
    this.#chunks.delete(chunkId);
  }

  search(question: string, topK: number): RetrievedHit[] {
    if (topK <= 0 || this.#chunks.size === 0) return [];
    const results = this.#index.search(question);
    const hits: RetrievedHit[] = [];
    for (const r of results) {
      const chunk = this.#chunks.get(r.id as string);
      if (chunk === undefined) continue;
      hits.push({ chunk, score: r.score });
      if (hits.length === topK) break;
    }
    return hits;
  }
}
