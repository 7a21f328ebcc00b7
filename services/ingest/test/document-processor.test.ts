import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectBus, type Bus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import { CollectionSchema, DocumentErrorReason, DocumentSchema, DocumentStatus } from "@ragtune/proto";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { chunkDocument, documentIdFor, parseDocument, type TokenCounter, type TokenizerName } from "@ragtune/text";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenizerCache, toChunkingProto, type EffectiveChunking } from "../src/chunking-options.js";
import { processDocument, type ProcessDeps } from "../src/document-processor.js";
import { CollectionIndexes } from "../src/collection-indexes.js";
import { decodeChunkSet, DocumentStore } from "../src/document-store.js";
import { prepareDocument } from "../src/document-work.js";

/** A tokenizer cache whose counters record every text they are asked to tokenize. */
class RecordingTokenizers extends TokenizerCache {
  readonly seen: string[] = [];

  override get(name: TokenizerName): TokenCounter {
    const inner = super.get(name);
    return {
      name: inner.name,
      file: inner.file,
      count: (text) => (this.seen.push(text), inner.count(text)),
      pieces: (text) => (this.seen.push(text), inner.pieces(text)),
    };
  }
}

const sentence = (topic: string, i: number): string => `The ${topic} service writes record ${i} to the ledger and waits for two replicas.`;
const paragraph = (topic: string, n: number): string => Array.from({ length: n }, (_, i) => sentence(topic, i)).join(" ");
const GUIDE = `# Ledger\n\n${paragraph("intro", 4)}\n\n## Setup\n\n${paragraph("setup", 30)}\n\n## Ports\n\n${paragraph("ports", 20)}\n\n## Limits\n\n${paragraph("limits", 25)}\n`;
const EDITED = GUIDE.replace(sentence("ports", 7), "Ports below 1024 need the bind capability.");
const CHUNKING: EffectiveChunking = { tokenizer: "mistral", chunkSize: 64, overlap: 0, packSections: true };

let nats: NatsServerHandle;
let bus: Bus;
let store: DocumentStore;
let documentIndexOfDocs: Awaited<ReturnType<typeof bus.kv<typeof DocumentSchema>>>;
const tokenizers = new RecordingTokenizers();
const published: Parameters<ProcessDeps["publishChunked"]>[0][] = [];

beforeAll(async () => {
  nats = await startNatsServer();
  const logger = createLogger({ svc: "ingest-test", level: process.env.TEST_LOG_LEVEL ?? "silent" });
  bus = await connectBus({ servers: nats.url, name: "document-processor-test", logger });
  const [collections, documents, indexedCollections, chunkSets] = await Promise.all([
    bus.kv("proc_collections", CollectionSchema),
    bus.kv("proc_documents", DocumentSchema),
    bus.kv("proc_indexed_collections", CollectionSchema),
    bus.artifacts("proc_chunk_sets"),
  ]);
  const indexes = new CollectionIndexes(bus, { documentIndex: (c) => `proc_document_index_${c}`, chunkIndex: (c) => `proc_chunk_index_${c}` });
  documentIndexOfDocs = await indexes.documentIndex("docs");
  store = new DocumentStore({
    collections,
    documents,
    indexes,
    indexedCollections,
    chunkSets,
  });
  await store.ensureCollection("docs");
});

afterAll(async () => {
  await bus?.close();
  await nats?.stop();
});

function ingest(text: string, onPublish?: ProcessDeps["publishChunked"]) {
  const deps: ProcessDeps = {
    store,
    // In the service a worker thread of the pool runs this; here it runs in-process so the tokenizer is observed.
    prepare: async (work) => prepareDocument(work, tokenizers),
    publishChunked: async (event) => {
      published.push(event);
      await onPublish?.(event);
    },
    maxDocumentBytes: 1 << 20,
    logger: createLogger({ svc: "ingest-test", level: "silent" }),
  };
  return processDocument(
    {
      runId: "run_1",
      collection: "docs",
      sourceName: "guide.md",
      mediaType: "",
      read: async () => new TextEncoder().encode(text),
      chunking: CHUNKING,
      chunkingProto: toChunkingProto(CHUNKING),
    },
    deps,
  );
}

function sectionText(text: string, heading: string): string {
  const doc = parseDocument({ text, filename: "guide.md" });
  const section = doc.sections.find((s) => s.headingPath.at(-1) === heading)!;
  return doc.text.slice(section.charStart, section.charEnd);
}

describe("processDocument: re-ingest of a changed document", () => {
  const documentId = documentIdFor("docs", "guide.md");

  it("tokenizes only the edited section and stores exactly the chunks of a full re-chunk", async () => {
    await ingest(GUIDE);
    tokenizers.seen.length = 0;
    const { result } = await ingest(EDITED);
    expect(result.status).toBe(DocumentStatus.READY);
    expect(result.changes!.added).toBeGreaterThan(0);
    expect(result.changes!.kept).toBeGreaterThan(result.changes!.added);

    const ports = sectionText(EDITED, "Ports");
    expect(tokenizers.seen).toContain(ports);
    expect(tokenizers.seen.filter((text) => !ports.includes(text))).toEqual([]);

    const document = await store.getDocument("docs", documentId);
    const stored = await store.readChunkSet(document!.chunkSet);
    const full = chunkDocument(parseDocument({ text: EDITED, filename: "guide.md" }), {
      tokenizer: new TokenizerCache().get("mistral"),
      chunkSize: CHUNKING.chunkSize,
      documentId,
    });
    expect(stored.map((c) => [c.id, c.text, c.tokenCount, c.charStart, c.charEnd, c.ordinal])).toEqual(
      full.map((c) => [c.id, c.text, c.tokenCount, c.charStart, c.charEnd, c.ordinal]),
    );
  });

  it("publishes the chunked event when the announced chunk set is stored and before the record points at it", async () => {
    await ingest(GUIDE);
    const previous = await store.getDocument("docs", documentId);
    let atEvent: { record: string | undefined; announced: string[] } | undefined;
    await ingest(EDITED, async (event) => {
      const bytes = await store.readChunkSetBytes(event.chunkSet.sha256);
      atEvent = { record: (await store.getDocument("docs", documentId))?.chunkSet?.sha256, announced: bytes === null ? [] : decodeChunkSet(bytes).map((c) => c.id) };
    });
    const current = await store.getDocument("docs", documentId);
    expect(current!.chunkSet!.sha256).not.toBe(previous!.chunkSet!.sha256);
    // What a follower of the events reads (ListChunks by the event's chunk set) is the new version already, while
    // the record still names the previous one.
    expect(atEvent).toEqual({ record: previous!.chunkSet!.sha256, announced: (await store.readChunkSet(current!.chunkSet)).map((c) => c.id) });
    expect(published.at(-1)!.title).toBe(current!.title);
  });

  it("stores a document again when its record is missing from the collection's document index (the one record it has)", async () => {
    const document = await store.getDocument("docs", documentId);
    await documentIndexOfDocs.delete(documentId);
    expect(await store.getDocument("docs", documentId)).toBeNull();
    expect((await store.pageDocuments("docs", 1, 10)).items).toEqual([]);
    published.length = 0;
    const { result } = await ingest(EDITED);
    expect(result.unchanged).toBe(false);
    expect(published).toHaveLength(1);
    const listed = (await store.pageDocuments("docs", 1, 10)).items;
    expect(listed.map((d) => [d.id, d.chunkSet?.sha256, d.chunkCount])).toEqual([[documentId, document!.chunkSet!.sha256, document!.chunkCount]]);
  });

  it("stores a document again when its stored chunk set is missing, though its content is unchanged", async () => {
    const document = await store.getDocument("docs", documentId);
    const before = await store.readChunkSet(document!.chunkSet);
    await store.deleteChunkSet(document!.chunkSet);
    tokenizers.seen.length = 0;
    published.length = 0;
    const { result } = await ingest(EDITED);
    expect(result.status).toBe(DocumentStatus.READY);
    expect(result.unchanged).toBe(false);
    expect(result.changes).toMatchObject({ added: 0, kept: before.length, removed: 0 });
    // Without the chunk set every section is chunked again …
    expect(tokenizers.seen).toContain(sectionText(EDITED, "Setup"));
    expect(tokenizers.seen).toContain(sectionText(EDITED, "Limits"));
    // … the chunk set is back, with the same chunks, and downstream is told they are all kept.
    const restored = await store.getDocument("docs", documentId);
    expect((await store.readChunkSet(restored!.chunkSet)).map((c) => c.id)).toEqual(before.map((c) => c.id));
    expect(published.map((e) => [e.added.length, e.kept.length, e.removed.length])).toEqual([[0, before.length, 0]]);
    // Now it is unchanged again.
    expect((await ingest(EDITED)).result.unchanged).toBe(true);
  });

  it("removes the chunks of a lost version when the changed document is stored, and deletes a document without its chunk set", async () => {
    const document = await store.getDocument("docs", documentId);
    const lost = await store.readChunkSet(document!.chunkSet);
    await store.deleteChunkSet(document!.chunkSet);
    const { result } = await ingest(GUIDE);
    expect(result.status).toBe(DocumentStatus.READY);
    const current = await store.readChunkSet((await store.getDocument("docs", documentId))!.chunkSet);
    const currentIds = new Set(current.map((c) => c.id));
    const gone = lost.filter((c) => !currentIds.has(c.id));
    expect(gone.length).toBeGreaterThan(0);
    expect(result.changes!.removed).toBe(gone.length);
    for (const c of gone) expect(await store.getChunk(c.id)).toBeNull();
    expect((await store.indexedChunks("docs", documentId)).map((c) => c.id).sort()).toEqual([...currentIds].sort());

    // The chunk set goes missing again; deleting the document still removes every chunk and the record.
    const again = await store.getDocument("docs", documentId);
    await store.deleteChunkSet(again!.chunkSet);
    const removed = await store.deleteDocument(again!);
    expect(removed.sort()).toEqual([...currentIds].sort());
    for (const c of current) expect(await store.getChunk(c.id)).toBeNull();
    expect(await store.indexedChunks("docs", documentId)).toEqual([]);
    expect(await store.getDocument("docs", documentId)).toBeNull();
  });
});

describe("processDocument: a server path's file, read by the worker", () => {
  const dir = mkdtempSync(join(tmpdir(), "ragtune-proc-path-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const ingestPath = (sourceName: string, path: string, maxDocumentBytes = 1 << 20) =>
    processDocument(
      { runId: "run_2", collection: "docs", sourceName, mediaType: "", path, chunking: CHUNKING, chunkingProto: toChunkingProto(CHUNKING) },
      {
        store,
        prepare: async (work) => prepareDocument(work, tokenizers),
        publishChunked: async () => {},
        maxDocumentBytes,
        logger: createLogger({ svc: "ingest-test", level: "silent" }),
      },
    );

  it("stores the file with its size; a missing or too large file fails with its reason and stores nothing", async () => {
    const path = join(dir, "setup.md");
    writeFileSync(path, GUIDE);
    const stored = await ingestPath("setup.md", path);
    expect(stored.result.status).toBe(DocumentStatus.READY);
    expect(stored.bytes).toBe(Buffer.byteLength(GUIDE));
    expect((await store.getDocument("docs", documentIdFor("docs", "setup.md")))?.sizeBytes).toBe(BigInt(Buffer.byteLength(GUIDE)));

    const missing = await ingestPath("gone.md", join(dir, "gone.md"));
    expect(missing.result).toMatchObject({ status: DocumentStatus.FAILED, errorReason: DocumentErrorReason.PATH_NOT_FOUND, error: { message: "gone.md: the file no longer exists" } });
    const large = await ingestPath("large.md", path, 100);
    expect(large.result).toMatchObject({ status: DocumentStatus.FAILED, errorReason: DocumentErrorReason.TOO_LARGE });
    expect(large.result.error?.message).toBe(`large.md: the document is ${Buffer.byteLength(GUIDE)} bytes, over the limit of 100 bytes (INGEST_MAX_DOCUMENT_BYTES)`);
    expect(await store.getDocument("docs", documentIdFor("docs", "gone.md"))).toBeNull();
    expect(await store.getDocument("docs", documentIdFor("docs", "large.md"))).toBeNull();

    // A file the parser refuses is recorded as failed, with the size the worker read.
    const empty = join(dir, "empty.md");
    writeFileSync(empty, "   \n");
    const refused = await ingestPath("empty.md", empty);
    expect(refused.result).toMatchObject({ status: DocumentStatus.FAILED, errorReason: DocumentErrorReason.EMPTY });
    expect((await store.getDocument("docs", documentIdFor("docs", "empty.md")))?.sizeBytes).toBe(4n);
  });
});
