import { seededRandom } from "@ragtune/testing";
import { describe, expect, it } from "vitest";
import { BatchPlanner, compareListed, type ListedChunk, type PlannedDocument } from "./batch-plan.js";

/** Documents of 1..12 chunks with source names out of ID order, and their chunks. */
function collection(docs: number, seed = 3): { documents: PlannedDocument[]; chunks: ListedChunk[] } {
  const random = seededRandom(seed);
  const documents = Array.from({ length: docs }, (_, d) => ({ id: `doc_${String(d).padStart(3, "0")}`, sourceName: `${String.fromCharCode(122 - (d % 26))}-${d}.md`, chunkCount: 1 + Math.floor(random() * 12) }));
  const chunks = documents.flatMap((d) =>
    Array.from({ length: d.chunkCount }, (_, ordinal) => ({ chunk: { id: `ch_${d.id}_${ordinal}`, documentId: d.id, headingPath: [d.sourceName], text: `chunk ${ordinal} of ${d.sourceName}` }, ordinal })),
  );
  return { documents, chunks };
}

/** The batches of a build that read every chunk first: the sorted chunks cut `size` at a time. */
function cutAfterReading(documents: PlannedDocument[], chunks: ListedChunk[], size: number): string[][] {
  const names = new Map(documents.map((d) => [d.id, d.sourceName]));
  const sorted = [...chunks].sort(compareListed((id) => names.get(id) ?? id)).map((l) => l.chunk.id);
  const out: string[][] = [];
  for (let i = 0; i < sorted.length; i += size) out.push(sorted.slice(i, i + size));
  return out;
}

/** Lists `chunks` in `order` in pages of `pageSize` through a planner; returns the batches as they were formed, per page. */
function plan(documents: PlannedDocument[] | undefined, listing: ListedChunk[], pageSize: number, size: number) {
  const planner = new BatchPlanner(size, documents);
  const perPage: string[][][] = [];
  for (let i = 0; i < listing.length; i += pageSize) perPage.push(planner.add(listing.slice(i, i + pageSize)).map((b) => b.map((c) => c.id)));
  const last = planner.finish().map((b) => b.map((c) => c.id));
  return { perPage, last, all: [...perPage.flat(), ...last], exact: planner.exact };
}

function shuffled<T>(xs: readonly T[], seed: number): T[] {
  const random = seededRandom(seed);
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

const sortedKeys = (batches: string[][]) => batches.map((b) => b.join(",")).sort();

describe("generation batches cut while the chunks are read", () => {
  it("forms exactly the batches of a build that read and sorted every chunk first, whatever the listing order and page size", () => {
    const { documents, chunks } = collection(40);
    for (const size of [1, 3, 8]) {
      const expected = sortedKeys(cutAfterReading(documents, chunks, size));
      for (const [seed, pageSize] of [
        [1, 7],
        [2, 64],
        [3, 1000],
      ] as const) {
        const got = plan(documents, shuffled(chunks, seed), pageSize, size);
        expect(got.exact).toBe(true);
        expect(sortedKeys(got.all)).toEqual(expected);
      }
    }
  });

  it("hands out a batch as soon as its chunks are listed, before the listing ends", () => {
    const { documents, chunks } = collection(30);
    const names = new Map(documents.map((d) => [d.id, d.sourceName]));
    // Listed in the fixed order: every full page completes the batches it holds.
    const inOrder = [...chunks].sort(compareListed((id) => names.get(id)!));
    const got = plan(documents, inOrder, 16, 8);
    expect(got.perPage[0]).toEqual([inOrder.slice(0, 8).map((l) => l.chunk.id), inOrder.slice(8, 16).map((l) => l.chunk.id)]);
    // Every batch, the short last one too, is handed out by the page that fills it; none is left for the end.
    expect(got.perPage.flat().length).toBe(Math.ceil(chunks.length / 8));
    expect(got.last).toEqual([]);
    // A batch waits for its last chunk, in whatever page it comes.
    const held = inOrder[3]!;
    const late = [...inOrder.filter((l) => l !== held), held];
    const planner = new BatchPlanner(8, documents);
    const first = planner.add(late.slice(0, 16));
    expect(first.map((b) => b[0]!.id)).toEqual([inOrder[8]!.chunk.id]); // the first batch lacks chunk 3
    expect(planner.add([held]).map((b) => b.map((c) => c.id))).toEqual([inOrder.slice(0, 8).map((l) => l.chunk.id)]);
  });

  it("cuts the batches not handed out yet from the sorted rest when chunks do not fit their documents' counts, the same way every time", () => {
    const { documents, chunks } = collection(20);
    // The collection changed between the two listings: one document has a chunk more than its count says, and a
    // chunk of a document the document listing did not have.
    const extra: ListedChunk = { chunk: { id: "ch_extra", documentId: documents[4]!.id, headingPath: [], text: "extra" }, ordinal: documents[4]!.chunkCount };
    const stranger: ListedChunk = { chunk: { id: "ch_stranger", documentId: "doc_new", headingPath: [], text: "new" }, ordinal: 0 };
    const listing = shuffled([...chunks, extra, stranger], 9);
    const a = plan(documents, listing, 50, 8);
    const b = plan(documents, listing, 50, 8);
    expect(a.exact).toBe(false);
    expect(a.all).toEqual(b.all);
    // Every chunk in exactly one batch, none larger than the batch size.
    const ids = a.all.flat();
    expect(ids.length).toBe(chunks.length + 2);
    expect(new Set(ids).size).toBe(ids.length);
    expect(a.all.every((batch) => batch.length >= 1 && batch.length <= 8)).toBe(true);
    // The batches handed out during the listing were complete places of the layout; the rest are the sorted cut.
    const names = new Map(documents.map((d) => [d.id, d.sourceName]));
    const handedOut = new Set(a.perPage.flat().flat());
    const rest = [...chunks, extra, stranger].filter((l) => !handedOut.has(l.chunk.id)).sort(compareListed((id) => names.get(id) ?? id));
    expect(a.last.flat()).toEqual(rest.map((l) => l.chunk.id));
  });

  it("without documents (an incremental build's fresh chunks) cuts every batch at the end, in the fixed order", () => {
    const { documents, chunks } = collection(10);
    const got = plan(undefined, shuffled(chunks, 4), 5, 4);
    expect(got.perPage.flat()).toEqual([]);
    // Unknown documents sort by ID: the same cut as sorting by ID.
    expect(got.all).toEqual(cutAfterReading(documents.map((d) => ({ ...d, sourceName: d.id })), chunks, 4));
  });
});
