import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@ragtune/rpc";
import { expectCode } from "@ragtune/testing";
import { ChunkSchema, CollectionSchema, DocumentSchema, IngestRunStatus, type Chunk, type DocumentSource } from "@ragtune/proto";
import { ingestResourceNames } from "../src/server.js";
import { startHarness, waitForRun, type Harness } from "./harness.js";

const enc = (s: string) => new TextEncoder().encode(s);
function inline(filename: string, content: string): DocumentSource {
  return {
    $typeName: "ragtune.ingest.v1.DocumentSource",
    source: { case: "inline", value: { $typeName: "ragtune.ingest.v1.InlineDocument", filename, mediaType: "", content: enc(content) } },
  };
}
const page = (topic: string) =>
  `# ${topic}\n\n${Array.from({ length: 12 }, (_, i) => `The ${topic} handler validates request ${i} and answers within its deadline.`).join(" ")}\n\n## More\n\n${topic} keeps an audit entry per request.\n`;

async function streamNames(h: Harness): Promise<string[]> {
  const names: string[] = [];
  for await (const batch of h.bus.jsm.streams.names()) names.push(...(Array.isArray(batch) ? batch : [batch]));
  return names;
}

describe("ingest service: the per-collection indexes", () => {
  let h: Harness;
  let names: ReturnType<typeof ingestResourceNames>;
  beforeAll(async () => {
    h = await startHarness();
    names = ingestResourceNames(h.config.INGEST_BUCKET_PREFIX);
  });
  afterAll(async () => {
    await h?.close();
  });

  async function ingest(collection: string, files: [string, string][]) {
    const { run: started } = await h.grpc.ingestDocuments({ collection, sources: files.map(([f, c]) => inline(f, c)), chunking: { chunkSizeTokens: 32 } });
    const { run } = await waitForRun(h.grpc, started!.id);
    expect(run.status).toBe(IngestRunStatus.SUCCEEDED);
    return run;
  }

  it("stores each chunk once (no by-ID bucket) and finds any chunk by its ID in any collection", async () => {
    await ingest("alpha", [["a.md", page("alpha")], ["b.md", page("beta")]]);
    await ingest("gamma", [["c.md", page("gamma")]]);
    expect(await streamNames(h)).not.toContain(`KV_${names.legacyChunks}`);
    // Each document record is written once, into its collection's document index.
    const sharedKeys: string[] = [];
    for await (const key of (await h.bus.kv(names.documents, DocumentSchema)).keys()) sharedKeys.push(key);
    expect(sharedKeys).toEqual([]);
    expect((await h.grpc.getDocument({ documentId: (await h.grpc.listDocuments({ collection: "gamma" })).documents[0]!.id })).document?.sourceName).toBe("c.md");
    for (const collection of ["alpha", "gamma"]) {
      const chunks = (await h.grpc.listChunks({ collection, page: { pageSize: 1000 } })).chunks;
      expect(chunks.length).toBeGreaterThan(2);
      for (const c of chunks) expect((await h.grpc.getChunk({ chunkId: c.id })).chunk).toEqual(c);
    }
    await expectCode(h.grpc.getChunk({ chunkId: "ch_0000000000000000000000000000000000000000" }), Code.NotFound, "ch_0000");
    await expectCode(h.grpc.getChunk({ chunkId: "ch_*" }), Code.NotFound, "ch_*");
  });

  it("a store from before: its document index is filled at startup and its by-ID chunks still read and are removed with their document", async () => {
    const documents = (await h.grpc.listDocuments({ collection: "alpha" })).documents;
    expect(documents.length).toBe(2);
    const chunks = (await h.grpc.listChunks({ documentId: documents[0]!.id, page: { pageSize: 1000 } })).chunks;
    // As an older version left it: document records in the shared bucket only (key <collection>.<documentId>), no
    // document index, no mark that it is complete, chunks by ID, and one of them only by ID (a store from before
    // the chunk index).
    const shared = await h.bus.kv(names.documents, DocumentSchema);
    for (const d of documents) await shared.put(`alpha.${d.id}`, d);
    await h.bus.jsm.streams.delete(`KV_${names.documentIndex("alpha")}`);
    await (await h.bus.kv(names.indexedCollections, CollectionSchema)).delete("alpha");
    const legacy = await h.bus.kv(names.legacyChunks, ChunkSchema);
    for (const c of chunks) await legacy.put(c.id, c);
    const onlyById: Chunk = { ...chunks[0]!, id: "ch_legacyonly0000000000000000000000000000", text: "kept only by ID" };
    await legacy.put(onlyById.id, onlyById);

    await h.restart();
    const listed = (await h.grpc.listDocuments({ collection: "alpha" })).documents;
    expect(listed.map((d) => d.id).sort()).toEqual(documents.map((d) => d.id).sort());
    expect((await h.grpc.listCollections({})).collections.find((c) => c.name === "alpha")?.documentCount).toBe(2);
    expect((await h.grpc.getChunk({ chunkId: onlyById.id })).chunk?.text).toBe("kept only by ID");
    expect((await h.grpc.getChunk({ chunkId: chunks[1]!.id })).chunk).toEqual(chunks[1]);

    // A second restart finds the index complete and does not fill it again (a document deleted from the index alone
    // stays out of it).
    await (await h.bus.kv(names.documentIndex("alpha"), DocumentSchema)).delete(documents[1]!.id);
    await h.restart();
    expect((await h.grpc.listDocuments({ collection: "alpha" })).documents.map((d) => d.id)).toEqual([documents[0]!.id]);

    await h.grpc.deleteDocument({ documentId: documents[0]!.id });
    expect(await shared.get(`alpha.${documents[0]!.id}`)).toBeNull();
    for (const c of chunks) {
      expect(await legacy.get(c.id)).toBeNull();
      await expectCode(h.grpc.getChunk({ chunkId: c.id }), Code.NotFound, c.id);
    }
  });

  it("DeleteCollection deletes the collection's index buckets; the name can be ingested again", async () => {
    const streams = await streamNames(h);
    expect(streams).toContain(`KV_${names.documentIndex("gamma")}`);
    expect(streams).toContain(`KV_${names.chunkIndex("gamma")}`);
    const chunkId = (await h.grpc.listChunks({ collection: "gamma" })).chunks[0]!.id;
    await h.grpc.deleteCollection({ collection: "gamma" });
    const after = await streamNames(h);
    expect(after).not.toContain(`KV_${names.documentIndex("gamma")}`);
    expect(after).not.toContain(`KV_${names.chunkIndex("gamma")}`);
    await expectCode(h.grpc.getChunk({ chunkId }), Code.NotFound, chunkId);
    expect(await (await h.bus.kv(names.indexedCollections, CollectionSchema)).get("gamma")).toBeNull();

    await ingest("gamma", [["d.md", page("delta")]]);
    const documents = (await h.grpc.listDocuments({ collection: "gamma" })).documents;
    expect(documents.map((d) => d.sourceName)).toEqual(["d.md"]);
    const chunks = (await h.grpc.listChunks({ collection: "gamma", page: { pageSize: 1000 } })).chunks;
    expect(chunks.length).toBe(documents[0]!.chunkCount);
    expect((await h.grpc.getChunk({ chunkId: chunks[0]!.id })).chunk).toEqual(chunks[0]);
  });
});
