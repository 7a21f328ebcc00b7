import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  DocumentStatus,
  IngestRunStatus,
  TokenizerKind,
  type Chunk,
  type Document,
} from "@ragtune/proto";
import { ServingStatus } from "@ragtune/rpc";
import { copyAwsCorpus, grpcJsHealthCheck, startHarness, waitForRun, type Harness, type IngestClient } from "./harness.js";

async function allDocuments(client: IngestClient, collection: string): Promise<Document[]> {
  const out: Document[] = [];
  let pageToken = "";
  do {
    const res = await client.listDocuments({ collection, page: { pageSize: 25, pageToken } });
    out.push(...res.documents);
    pageToken = res.page?.nextPageToken ?? "";
  } while (pageToken !== "");
  return out;
}

async function allChunks(client: IngestClient, collection: string): Promise<Chunk[]> {
  const out: Chunk[] = [];
  let pageToken = "";
  do {
    const res = await client.listChunks({ collection, page: { pageSize: 200, pageToken } });
    out.push(...res.chunks);
    pageToken = res.page?.nextPageToken ?? "";
  } while (pageToken !== "");
  return out;
}

describe("ingest of the AWS documentation corpus as a server-side directory", () => {
  let h: Harness;
  let files: string[];

  beforeAll(async () => {
    h = await startHarness();
    files = await copyAwsCorpus(h.root, "aws-docs");
  });
  afterAll(async () => {
    await h?.close();
  });

  let firstChunks: Chunk[] = [];
  let firstDocuments: Document[] = [];

  it("answers a @grpc/grpc-js health check", async () => {
    const res = await grpcJsHealthCheck(`127.0.0.1:${h.server.port}`, "ragtune.ingest.v1.IngestService");
    expect(res.status).toBe(ServingStatus.SERVING);
  });

  it("chunks every document with unique IDs, within budget, with sane statistics", async () => {
    const { run: started } = await h.grpc.ingestDocuments({
      collection: "aws",
      sources: [{ source: { case: "serverPath", value: { path: "aws-docs" } } }],
    });
    expect(started?.id).toMatch(/^run_/);
    expect([IngestRunStatus.QUEUED, IngestRunStatus.RUNNING]).toContain(started?.status);
    const { run } = await waitForRun(h.grpc, started!.id);

    expect(run.status).toBe(IngestRunStatus.SUCCEEDED);
    expect(run.documents.map((d) => d.sourceName)).toEqual(files);
    expect(run.documents.every((d) => d.status === DocumentStatus.READY && d.chunkCount > 0 && !d.unchanged)).toBe(true);
    expect(run.chunking?.tokenizer).toBe(TokenizerKind.MISTRAL);
    expect(run.chunking?.chunkSizeTokens).toBe(512);

    const stats = run.statistics!;
    expect(stats.documentsTotal).toBe(files.length);
    expect(stats.documentsIngested).toBe(files.length);
    expect(stats.documentsFailed).toBe(0);
    const tokens = stats.tokenStats!;
    expect(tokens.budget).toBe(512);
    expect(tokens.overBudgetCount).toBe(0);
    expect(tokens.max).toBeLessThanOrEqual(512);
    expect(tokens.min).toBeGreaterThan(0);
    expect(tokens.mean).toBeGreaterThan(tokens.min);
    expect(tokens.median).toBeGreaterThanOrEqual(tokens.min);
    expect(tokens.shareInTopQuarterOfBudget).toBeGreaterThan(0);
    expect(tokens.shareInTopQuarterOfBudget).toBeLessThanOrEqual(1);
    expect(stats.chunkChanges?.added).toBe(tokens.count);
    expect(Number(stats.bytesTotal)).toBeGreaterThan(700_000);

    // Listings run in the order documents and chunks were last written.
    firstDocuments = await allDocuments(h.connect, "aws");
    expect(firstDocuments.map((d) => d.sourceName).sort()).toEqual(files);
    firstChunks = await allChunks(h.connect, "aws");
    expect(firstChunks.length).toBe(tokens.count);
    expect(new Set(firstChunks.map((c) => c.id)).size).toBe(firstChunks.length);
    expect(firstChunks.every((c) => c.tokenCount <= 512 && c.collection === "aws" && c.headingPath.length > 0)).toBe(true);
    const sum = run.documents.reduce((n, d) => n + d.chunkCount, 0);
    expect(sum).toBe(firstChunks.length);

    const { collections } = await h.grpc.listCollections({});
    expect(collections.map((c) => c.name)).toEqual(["aws"]);
    expect(collections[0]!.documentCount).toBe(files.length);
    expect(collections[0]!.chunkCount).toBe(firstChunks.length);
    expect(collections[0]!.totalTokens).toBe(tokens.totalTokens);

    // A chunk by ID, and a document's chunks in ordinal order with offsets into its text.
    const probe = firstChunks[17]!;
    expect((await h.grpc.getChunk({ chunkId: probe.id })).chunk?.text).toBe(probe.text);
    const doc = (await h.grpc.getDocument({ documentId: probe.documentId })).document!;
    expect(doc.status).toBe(DocumentStatus.READY);
    expect(doc.contentSha256).toMatch(/^[0-9a-f]{64}$/);
    const docChunks = (await h.grpc.listChunks({ documentId: doc.id, page: { pageSize: 1000 } })).chunks;
    expect(docChunks.map((c) => c.ordinal)).toEqual(docChunks.map((_, i) => i));
    expect(docChunks.length).toBe(doc.chunkCount);
    for (const c of docChunks) expect(c.charEnd - c.charStart).toBe(c.text.length);
  });

  it("re-ingesting the same directory keeps every chunk ID and reports the documents unchanged", async () => {
    const { run: started } = await h.connect.ingestDocuments({
      collection: "aws",
      sources: [{ source: { case: "serverPath", value: { path: `${h.root}/aws-docs`, extensions: [".md"] } } }],
    });
    const { run } = await waitForRun(h.connect, started!.id);
    expect(run.status).toBe(IngestRunStatus.SUCCEEDED);
    expect(run.documents.every((d) => d.unchanged && d.changes?.added === 0 && d.changes?.removed === 0)).toBe(true);
    expect(run.statistics?.documentsUnchanged).toBe(files.length);
    expect(run.statistics?.documentsIngested).toBe(0);
    expect(run.statistics?.chunkChanges?.kept).toBe(firstChunks.length);
    expect(run.statistics?.tokenStats?.count).toBe(firstChunks.length);
    expect((await allChunks(h.grpc, "aws")).map((c) => c.id)).toEqual(firstChunks.map((c) => c.id));
  });

  it("a restarted service lists the same documents and chunks", async () => {
    await h.restart();
    expect(h.server.instance.resumedRuns).toEqual([]);
    const documents = await allDocuments(h.grpc, "aws");
    expect(documents.map((d) => [d.id, d.contentSha256, d.chunkSet?.sha256])).toEqual(
      firstDocuments.map((d) => [d.id, d.contentSha256, d.chunkSet?.sha256]),
    );
    const chunks = await allChunks(h.connect, "aws");
    expect(chunks.map((c) => [c.id, c.text])).toEqual(firstChunks.map((c) => [c.id, c.text]));
  });
});
