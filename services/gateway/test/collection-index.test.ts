/**
 * CollectionIndexes on ingest events (unit: the ingest service is a stand-in that answers as the real one does; the
 * end-to-end follow of real events is in ask.test.ts). Ingest publishes a DocumentChunked event before it writes the
 * document's record, so the index must take the version the event announces — each interleaving forced here.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { createLogger } from "@ragtune/logger";
import {
  ArtifactRefSchema,
  ChunkSchema,
  type Chunk,
  type DocumentChunked,
  DocumentChunkedSchema,
  DocumentSchema,
  DocumentStatus,
  type ListChunksRequest,
} from "@ragtune/proto";
import { describe, expect, it } from "vitest";
import { CollectionIndexes, type IndexUpdate, type IngestClient } from "../src/collection-index.js";

const sha = (n: number) => n.toString(16).padStart(64, "0");
const chunk = (documentId: string, ordinal: number, text: string) => create(ChunkSchema, { id: `${documentId}.${ordinal}`, documentId, ordinal, text, headingPath: ["H"] });

/** What ingest stores: chunk sets by sha256 and the record of each document (which names one chunk set). */
class FakeIngest {
  readonly chunkSets = new Map<string, Chunk[]>();
  readonly records = new Map<string, { title: string; chunkSet: string }>();
  readonly calls: Partial<ListChunksRequest>[] = [];

  client(): IngestClient {
    return {
      listDocuments: async () => ({
        documents: [...this.records].map(([id, r]) => create(DocumentSchema, { id, collection: "docs", title: r.title, status: DocumentStatus.READY })),
      }),
      listChunks: async (req: Partial<ListChunksRequest>) => {
        this.calls.push(req);
        if (req.collection) return { chunks: [...this.records.values()].flatMap((r) => this.chunkSets.get(r.chunkSet) ?? []) };
        // By document: the announced version when a chunk set is named, else the record's.
        const set = req.chunkSetSha256 || this.records.get(req.documentId!)?.chunkSet;
        const chunks = set === undefined ? undefined : this.chunkSets.get(set);
        if (chunks === undefined || chunks[0]?.documentId !== req.documentId) throw new ConnectError("not stored", Code.NotFound);
        return { chunks };
      },
    } as unknown as IngestClient;
  }
}

const chunked = (documentId: string, set: string, title: string): DocumentChunked =>
  create(DocumentChunkedSchema, { collection: "docs", documentId, sourceName: `${documentId}.md`, title, chunkSet: create(ArtifactRefSchema, { sha256: set }) });

function setup() {
  const ingest = new FakeIngest();
  const indexes = new CollectionIndexes({ ingest: ingest.client(), logger: createLogger({ svc: "gateway-test", level: "silent" }) });
  const updates: IndexUpdate[] = [];
  indexes.onUpdate((u) => updates.push(u));
  return { ingest, indexes, updates };
}

describe("CollectionIndexes on DocumentChunked", () => {
  it("indexes the version the event announces while the document's record still names the previous one (or none)", async () => {
    const { ingest, indexes, updates } = setup();
    ingest.chunkSets.set(sha(1), [chunk("a", 0, "alpha keeps telemetry in columnar files")]);
    ingest.records.set("a", { title: "Alpha", chunkSet: sha(1) });
    const index = await indexes.get("docs");

    // A changed document: its new chunk set is stored and announced; the record is not written yet.
    ingest.chunkSets.set(sha(2), [chunk("a", 0, "alpha keeps telemetry in parquet partitions")]);
    await indexes.documentChanged(chunked("a", sha(2), "Alpha v2"));
    expect(index.retriever.search("parquet", 5).map((h) => h.chunk.chunkId)).toEqual(["a.0"]);
    expect(index.retriever.search("columnar", 5)).toEqual([]);
    expect(index.titles.get("a")).toBe("Alpha v2");

    // A new document with no record at all yet.
    ingest.chunkSets.set(sha(3), [chunk("b", 0, "the beta scheduler rotates credentials"), chunk("b", 1, "every night")]);
    await indexes.documentChanged(chunked("b", sha(3), ""));
    expect(index.retriever.search("scheduler", 5).map((h) => h.chunk.chunkId)).toEqual(["b.0"]);
    expect(index.titles.get("b")).toBe("b.md"); // no title: the source name
    expect(updates.map((u) => [u.kind, u.documentId ?? "", u.chunks])).toEqual([
      ["loaded", "", 1],
      ["document-refreshed", "a", 1],
      ["document-refreshed", "b", 3],
    ]);
    expect(ingest.calls.filter((c) => c.documentId).map((c) => c.chunkSetSha256)).toEqual([sha(2), sha(3)]);
  });

  it("skips the event of a version replaced already and applies its successor's event", async () => {
    const { ingest, indexes, updates } = setup();
    ingest.chunkSets.set(sha(1), [chunk("a", 0, "first version")]);
    ingest.records.set("a", { title: "A", chunkSet: sha(1) });
    const index = await indexes.get("docs");

    // Versions 2 and 3 both landed before the index read version 2's event; version 2's chunk set is deleted.
    ingest.chunkSets.delete(sha(1));
    ingest.chunkSets.set(sha(3), [chunk("a", 0, "third version")]);
    ingest.records.set("a", { title: "A", chunkSet: sha(3) });
    await indexes.documentChanged(chunked("a", sha(2), "A"));
    expect(index.retriever.search("first", 5).map((h) => h.chunk.chunkId)).toEqual(["a.0"]); // left as it was, not dropped
    await indexes.documentChanged(chunked("a", sha(3), "A"));
    expect(index.retriever.search("third", 5).map((h) => h.chunk.chunkId)).toEqual(["a.0"]);
    expect(updates.map((u) => u.kind)).toEqual(["loaded", "document-refreshed"]);
  });

  it("ignores events of collections never asked about", async () => {
    const { ingest, indexes, updates } = setup();
    await indexes.documentChanged(chunked("a", sha(1), "A"));
    expect(ingest.calls).toEqual([]);
    expect(updates).toEqual([]);
  });
});
