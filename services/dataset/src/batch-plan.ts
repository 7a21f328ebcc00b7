/**
 * Generation batches cut while the collection's chunks are still being read.
 *
 * A build's batches must not depend on the order ingest lists chunks in (it lists in write order): a build taken over
 * by another replica has to form the same batches to read the finished ones back. The batches are therefore the cut,
 * `batchChunks` at a time, of one fixed order of the chunks — documents by source name (then ID), chunks by ordinal
 * (then ID) — and that is the order `compareListed` sorts by.
 *
 * Without waiting for every chunk: the collection's documents (a short listing) say how many chunks each has, so the
 * place of every chunk in the fixed order is known as soon as the chunk arrives (its document's offset + its ordinal),
 * and a batch is complete, and can be queued, once its places are filled — whatever page they came in. When the
 * listing ends, the remaining batches follow. If the chunks do not fit the documents' counts (a chunk past its
 * document's count, two chunks at one place, an unknown document: the collection changed between the two listings),
 * the batches not queued yet are cut from the sorted remaining chunks instead; a build over the same listing still
 * forms the same batches.
 */
import type { SourceChunk } from "./extractive-generator.js";

/** A chunk as listed by ingest: the source chunk and its position in its document. */
export interface ListedChunk {
  chunk: SourceChunk;
  ordinal: number;
}

/** A document of the collection as the plan needs it. */
export interface PlannedDocument {
  id: string;
  sourceName: string;
  chunkCount: number;
}

/** The fixed order: documents by source name (unknown documents by ID), then ID; chunks by ordinal, then ID. */
export function compareListed(nameOf: (documentId: string) => string): (a: ListedChunk, b: ListedChunk) => number {
  const cmp = (x: string, y: string) => (x < y ? -1 : x > y ? 1 : 0);
  return (a, b) =>
    cmp(nameOf(a.chunk.documentId), nameOf(b.chunk.documentId)) || cmp(a.chunk.documentId, b.chunk.documentId) || a.ordinal - b.ordinal || cmp(a.chunk.id, b.chunk.id);
}

export class BatchPlanner {
  private readonly offsets = new Map<string, { offset: number; count: number }>();
  private readonly slots: (ListedChunk | undefined)[];
  /** Filled places per batch of the layout. */
  private readonly filled: number[];
  private readonly queued: boolean[];
  private readonly unplaced: ListedChunk[] = [];
  private readonly compare: (a: ListedChunk, b: ListedChunk) => number;
  private finished = false;
  /** After `finish`: whether every chunk fell on its place (the batches are exactly the cut of the sorted chunks). */
  exact = false;

  /** `documents` undefined: no layout, every batch is cut at `finish` (e.g. an incremental build's fresh chunks). */
  constructor(
    private readonly batchChunks: number,
    documents: readonly PlannedDocument[] | undefined,
  ) {
    if (!Number.isInteger(batchChunks) || batchChunks < 1) throw new RangeError(`batchChunks must be a positive integer, got ${batchChunks}`);
    const names = new Map((documents ?? []).map((d) => [d.id, d.sourceName]));
    this.compare = compareListed((id) => names.get(id) ?? id);
    const ordered = [...(documents ?? [])].sort((a, b) => (a.sourceName < b.sourceName ? -1 : a.sourceName > b.sourceName ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    let offset = 0;
    for (const d of ordered) {
      this.offsets.set(d.id, { offset, count: d.chunkCount });
      offset += d.chunkCount;
    }
    this.slots = new Array<ListedChunk | undefined>(documents === undefined ? 0 : offset);
    const batches = Math.ceil(this.slots.length / batchChunks);
    this.filled = new Array<number>(batches).fill(0);
    this.queued = new Array<boolean>(batches).fill(false);
  }

  private sizeOf(batch: number): number {
    return Math.min(this.batchChunks, this.slots.length - batch * this.batchChunks);
  }

  private batchAt(batch: number): SourceChunk[] {
    this.queued[batch] = true;
    return this.slots.slice(batch * this.batchChunks, batch * this.batchChunks + this.sizeOf(batch)).map((l) => l!.chunk);
  }

  /** Places a page of chunks; returns the batches they completed, in the fixed order. */
  add(page: readonly ListedChunk[]): SourceChunk[][] {
    if (this.finished) throw new Error("the batch plan is finished");
    const completed: number[] = [];
    for (const listed of page) {
      const doc = this.offsets.get(listed.chunk.documentId);
      const place = doc === undefined || listed.ordinal >= doc.count ? -1 : doc.offset + listed.ordinal;
      if (place < 0 || place >= this.slots.length || this.slots[place] !== undefined) {
        this.unplaced.push(listed);
        continue;
      }
      this.slots[place] = listed;
      const batch = Math.floor(place / this.batchChunks);
      if (++this.filled[batch]! === this.sizeOf(batch)) completed.push(batch);
    }
    return completed.sort((a, b) => a - b).map((b) => this.batchAt(b));
  }

  /** The listing ended: the batches not returned yet. */
  finish(): SourceChunk[][] {
    if (this.finished) throw new Error("the batch plan is finished");
    this.finished = true;
    const open = this.queued.flatMap((q, b) => (q ? [] : [b]));
    this.exact = this.unplaced.length === 0 && open.every((b) => this.filled[b] === this.sizeOf(b));
    if (this.exact) return open.map((b) => this.batchAt(b));
    const rest = [...open.flatMap((b) => this.slots.slice(b * this.batchChunks, b * this.batchChunks + this.sizeOf(b)).filter((l) => l !== undefined)), ...this.unplaced].sort(this.compare);
    const out: SourceChunk[][] = [];
    for (let i = 0; i < rest.length; i += this.batchChunks) out.push(rest.slice(i, i + this.batchChunks).map((l) => l.chunk));
    return out;
  }
}
