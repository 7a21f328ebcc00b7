import { randomUUID, createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { ArtifactStore, Bus } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  ArtifactRefSchema,
  CollectionDeletedSchema,
  DocumentDeletedSchema,
  DocumentStatus,
  IngestRunItemSchema,
  IngestRunRecordSchema,
  IngestRunSchema,
  IngestRunStatus,
  IngestService,
  PageResponseSchema,
  ServerPathSchema,
  type Chunk,
  type IngestRunItem,
} from "@ragtune/proto";
import { decodePageToken, DEFAULT_PAGE_SIZE, encodePageToken, invalidArgument, MAX_PAGE_SIZE, notFound, paginate } from "@ragtune/rpc";
import { resolveChunking, toChunkingProto, type ChunkingDefaults } from "./chunking-options.js";
import { collectionNameProblem, decodeChunkSet, type DocumentStore } from "./document-store.js";
import type { IngestRunner } from "./ingest-runner.js";
import type { KeyedLock } from "./keyed-lock.js";
import type { RunStore } from "./run-store.js";

const SHA256_HEX = /^[0-9a-f]{64}$/;

export const DEFAULT_COLLECTION = "default";

export interface IngestServiceDeps {
  store: DocumentStore;
  runs: RunStore;
  runner: IngestRunner;
  /** Inline document content, stored before IngestDocuments returns. */
  sources: ArtifactStore;
  bus: Pick<Bus, "publish">;
  locks: KeyedLock;
  logger: Logger;
  chunkingDefaults: ChunkingDefaults;
}

function collectionOf(name: string, field = "collection"): string {
  const collection = name === "" ? DEFAULT_COLLECTION : name;
  const problem = collectionNameProblem(collection);
  if (problem !== undefined) throw invalidArgument(field, problem);
  return collection;
}

function runIdFor(collection: string, clientRequestId: string): string {
  if (clientRequestId === "") return `run_${randomUUID().replace(/-/g, "")}`;
  return `run_${createHash("sha256").update(`ragtune-ingest-run-v1\u0000${collection}\u0000${clientRequestId}`).digest("hex").slice(0, 32)}`;
}

/** The IngestService RPC handlers over the document store, the run store and the runner. */
export function createIngestService(deps: IngestServiceDeps): ServiceImpl<typeof IngestService> {
  const { store, runs } = deps;

  const requireCollection = async (name: string, field = "collection") => {
    const collection = collectionOf(name, field);
    const record = await store.getCollection(collection);
    if (record === null) throw notFound("collection", collection);
    return record;
  };

  const pageSize = (size: number | undefined) => (size === undefined || size === 0 ? DEFAULT_PAGE_SIZE : Math.min(size, MAX_PAGE_SIZE));
  // Listings that continue from a store position (a KV revision, from 1) rather than an offset: the page token
  // carries that position and the filter it was issued for.
  const decodeCursor = (token: string, filter: string) => (token === "" ? 1 : Math.max(1, decodePageToken(token, filter)));
  const encodeCursor = (position: number, filter: string) => encodePageToken({ o: position, f: filter });

  const requireDocument = async (documentId: string) => {
    if (documentId === "") throw invalidArgument("document_id", "must not be empty; take the id of a document from ListDocuments");
    const document = await store.findDocument(documentId);
    if (document === null) throw notFound("document", documentId);
    return document;
  };

  /** The chunks of one document version named by its chunk set's hash (a DocumentChunked event's chunk_set). */
  const announcedChunks = async (documentId: string, sha256: string): Promise<{ chunks: Chunk[]; chunkSet: string }> => {
    if (!SHA256_HEX.test(sha256)) {
      throw invalidArgument("chunk_set_sha256", "must be 64 lowercase hex digits: the chunk_set.sha256 of a DocumentChunked event");
    }
    const encoded = await store.readChunkSetBytes(sha256);
    const chunks = encoded === null ? [] : decodeChunkSet(encoded);
    if (chunks.length === 0 || chunks[0]!.documentId !== documentId) {
      throw new ConnectError(
        `chunk set ${sha256} of document "${documentId}" is not stored: a later version or a delete replaced it (its own event follows); list the document without chunk_set_sha256 for its current version`,
        Code.NotFound,
      );
    }
    return { chunks, chunkSet: sha256 };
  };

  /** The chunks of the version a document's record names (none unless it is READY). */
  const currentChunks = async (documentId: string): Promise<{ chunks: Chunk[]; chunkSet: string }> => {
    const document = await requireDocument(documentId);
    if (document.status !== DocumentStatus.READY) return { chunks: [], chunkSet: document.chunkSet?.sha256 ?? "" };
    const encoded = document.chunkSet === undefined ? null : await store.readChunkSetBytes(document.chunkSet.sha256);
    // A lost chunk set: the chunk index still holds the chunks (until a re-ingest stores the set again).
    const chunks = encoded !== null ? decodeChunkSet(encoded) : (await store.indexedChunks(document.collection, document.id)).sort((a, b) => a.ordinal - b.ordinal);
    return { chunks, chunkSet: document.chunkSet?.sha256 ?? "" };
  };

  return {
    async ingestDocuments(req) {
      const collection = collectionOf(req.collection);
      if (req.sources.length === 0) {
        throw invalidArgument("sources", "the batch holds no documents; add at least one inline document or server path");
      }
      const chunking = resolveChunking(req.chunking, deps.chunkingDefaults);
      if (!chunking.ok) throw invalidArgument(chunking.field, chunking.message);

      // Check the request before storing anything.
      const names = new Set<string>();
      for (const [i, source] of req.sources.entries()) {
        if (source.source.case === "inline") {
          const name = source.source.value.filename;
          if (name.trim() === "") throw invalidArgument(`sources[${i}].inline.filename`, "must not be empty; it names the document");
          if (names.has(name)) throw invalidArgument(`sources[${i}].inline.filename`, `"${name}" appears twice in the batch; file names must be unique`);
          names.add(name);
        } else if (source.source.case === "serverPath") {
          if (source.source.value.path.trim() === "") throw invalidArgument(`sources[${i}].server_path.path`, "must not be empty");
        } else {
          throw invalidArgument(`sources[${i}]`, "set either inline or server_path");
        }
      }

      const runId = runIdFor(collection, req.clientRequestId);
      if (req.clientRequestId !== "") {
        const existing = await runs.get(runId);
        if (existing !== null) return { run: existing.record.run };
      }

      // Inline content goes to the object store before the run exists, so a restart loses nothing.
      const requested: IngestRunItem[] = [];
      for (const source of req.sources) {
        if (source.source.case === "inline") {
          const inline = source.source.value;
          const info = await deps.sources.put([inline.content]);
          requested.push(create(IngestRunItemSchema, {
            sourceName: inline.filename,
            mediaType: inline.mediaType,
            source: {
              case: "inlineContent",
              value: create(ArtifactRefSchema, {
                bucket: deps.sources.bucket,
                objectName: info.hash,
                sha256: info.hash,
                sizeBytes: BigInt(info.size),
                mediaType: inline.mediaType,
              }),
            },
          }));
        } else if (source.source.case === "serverPath") {
          requested.push(create(IngestRunItemSchema, {
            sourceName: source.source.value.path,
            source: { case: "serverPath", value: create(ServerPathSchema, source.source.value) },
          }));
        }
      }

      await store.ensureCollection(collection);
      const record = create(IngestRunRecordSchema, {
        run: create(IngestRunSchema, {
          id: runId,
          collection,
          status: IngestRunStatus.QUEUED,
          chunking: toChunkingProto(chunking.value),
          createdAt: timestampNow(),
        }),
        requested,
        clientRequestId: req.clientRequestId,
      });
      if (!(await runs.create(record, { event: { case: "statusChanged", value: { status: IngestRunStatus.QUEUED } } }))) {
        // A concurrent retry with the same client_request_id won.
        const winner = await runs.get(runId);
        return { run: winner?.record.run };
      }
      deps.runner.submit(runId);
      deps.logger.info({ runId, collection, sources: req.sources.length }, "ingest run queued");
      return { run: record.run };
    },

    async getIngestRun(req) {
      if (req.runId === "") throw invalidArgument("run_id", "must not be empty; use the run id IngestDocuments returned");
      const found = await runs.get(req.runId);
      if (found === null) throw notFound("ingest run", req.runId);
      return { run: found.record.run };
    },

    async *watchIngestRun(req, ctx) {
      if (req.runId === "") throw invalidArgument("run_id", "must not be empty; use the run id IngestDocuments returned");
      const found = await runs.get(req.runId);
      if (found === null) throw notFound("ingest run", req.runId);
      const from = Math.max(1, req.fromSequence);
      for await (const event of runs.events(req.runId, from, ctx.signal)) {
        yield { event };
      }
    },

    async listCollections(req) {
      const page = paginate(await store.listCollections(), req.page, "collections");
      return { collections: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async listDocuments(req) {
      const { name: collection, documentCount } = await requireCollection(req.collection);
      if (req.status !== DocumentStatus.UNSPECIFIED) {
        const documents = (await store.listDocuments(collection)).filter((d) => d.status === req.status);
        const page = paginate(documents, req.page, `documents:${collection}:${req.status}`);
        return { documents: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
      }
      // Every document, in the order they were last written: a page reads only its own records.
      const filter = `documents:${collection}`;
      const from = decodeCursor(req.page?.pageToken ?? "", filter);
      const page = await store.pageDocuments(collection, from, pageSize(req.page?.pageSize));
      return {
        documents: page.items,
        page: create(PageResponseSchema, { nextPageToken: page.next === 0 ? "" : encodeCursor(page.next, filter), totalSize: documentCount }),
      };
    },

    async getDocument(req) {
      return { document: await requireDocument(req.documentId) };
    },

    async listChunks(req) {
      if (req.documentId !== "") {
        // The version a DocumentChunked event announces (readable before the document's record points at it), or the
        // version the record names; either is paged the same way.
        const { chunks, chunkSet } = req.chunkSetSha256 !== "" ? await announcedChunks(req.documentId, req.chunkSetSha256) : await currentChunks(req.documentId);
        const page = paginate(chunks, req.page, `chunks:doc:${req.documentId}:${chunkSet}`);
        return { chunks: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
      }
      if (req.collection !== "") {
        // A collection's chunks in the order they were last written: a page reads only its own entries.
        const { name: collection, chunkCount } = await requireCollection(req.collection);
        const filter = `chunks:col:${collection}`;
        const from = decodeCursor(req.page?.pageToken ?? "", filter);
        const page = await store.pageCollectionChunks(collection, from, pageSize(req.page?.pageSize));
        return {
          chunks: page.items,
          page: create(PageResponseSchema, { nextPageToken: page.next === 0 ? "" : encodeCursor(page.next, filter), totalSize: chunkCount }),
        };
      }
      throw invalidArgument("document_id", "set document_id (chunks of one document) or collection (chunks of a whole collection)");
    },

    async getChunk(req) {
      if (req.chunkId === "") throw invalidArgument("chunk_id", "must not be empty");
      const chunk = await store.getChunk(req.chunkId);
      if (chunk === null) throw notFound("chunk", req.chunkId);
      return { chunk };
    },

    async deleteDocument(req) {
      const document = await requireDocument(req.documentId);
      const removed = await deps.locks.run(document.collection, async () => {
        const current = await store.getDocument(document.collection, document.id);
        if (current === null) return null;
        const ids = await store.deleteDocument(current);
        await deps.bus.publish(
          DocumentDeletedSchema,
          {
            eventId: `${current.id}:deleted:${current.contentSha256}`,
            occurredAt: timestampNow(),
            collection: current.collection,
            documentId: current.id,
            removedChunkIds: ids,
          },
          { msgId: `${current.id}:deleted:${current.contentSha256}` },
        );
        await store.refreshCollection(current.collection);
        return ids;
      });
      if (removed === null) throw notFound("document", req.documentId);
      deps.logger.info({ documentId: document.id, collection: document.collection, chunks: removed.length }, "document deleted");
      return { documentId: document.id, chunksRemoved: removed.length };
    },

    async deleteCollection(req) {
      if (req.collection === "") throw invalidArgument("collection", "must not be empty; name the collection to delete");
      const { name: collection } = await requireCollection(req.collection);
      const result = await deps.locks.run(collection, async () => {
        const documents = await store.listDocuments(collection);
        let chunks = 0;
        for (const document of documents) chunks += (await store.deleteDocument(document)).length;
        await store.deleteCollectionRecord(collection);
        const deletedAt = Date.now();
        await deps.bus.publish(
          CollectionDeletedSchema,
          {
            eventId: `${collection}:deleted:${deletedAt}`,
            occurredAt: timestampNow(),
            collection,
            removedDocumentIds: documents.map((d) => d.id),
          },
          { msgId: `${collection}:deleted:${deletedAt}` },
        );
        return { documents: documents.length, chunks };
      });
      deps.logger.info({ collection, ...result }, "collection deleted");
      return { collection, documentsRemoved: result.documents, chunksRemoved: result.chunks };
    },
  };
}
