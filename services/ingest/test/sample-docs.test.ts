import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DocumentStatus, IngestRunStatus, type Chunk } from "@ragtune/proto";
import { SAMPLE_DOCS, startHarness, waitForRun, type Harness } from "./harness.js";

describe("the repo's sample documentation sent as inline bytes", () => {
  let h: Harness;
  let sources: { filename: string; content: Uint8Array; mediaType: string }[];

  beforeAll(async () => {
    h = await startHarness();
    const names = (await readdir(SAMPLE_DOCS)).filter((n) => /\.(md|html)$/.test(n)).sort();
    sources = await Promise.all(
      names.map(async (filename, i) => ({
        filename,
        content: new Uint8Array(await readFile(join(SAMPLE_DOCS, filename))),
        // One document names its media type explicitly; the others are inferred from the name.
        mediaType: i === 0 ? (filename.endsWith(".html") ? "text/html" : "text/markdown; charset=utf-8") : "",
      })),
    );
  });
  afterAll(async () => {
    await h?.close();
  });

  const ingest = async (collection: string) => {
    const { run } = await h.grpc.ingestDocuments({
      collection,
      sources: sources.map((s) => ({ source: { case: "inline" as const, value: s } })),
      chunking: { chunkSizeTokens: 128 },
    });
    return (await waitForRun(h.grpc, run!.id)).run;
  };
  const chunksOf = async (collection: string): Promise<Chunk[]> => (await h.connect.listChunks({ collection, page: { pageSize: 1000 } })).chunks;

  it("ingests every Markdown and HTML file with heading paths and budgeted chunks", async () => {
    expect(sources.length).toBeGreaterThanOrEqual(4);
    expect(sources.some((s) => s.filename.endsWith(".html"))).toBe(true);
    const run = await ingest("sample");
    expect(run.status).toBe(IngestRunStatus.SUCCEEDED);
    expect(run.documents.map((d) => d.sourceName)).toEqual(sources.map((s) => s.filename));
    expect(run.documents.every((d) => d.status === DocumentStatus.READY && d.chunkCount > 0)).toBe(true);
    const chunks = await chunksOf("sample");
    expect(chunks.length).toBe(run.statistics?.tokenStats?.count);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(chunks.length);
    expect(chunks.every((c) => c.tokenCount > 0 && c.tokenCount <= 128 && c.headingPath.length > 0)).toBe(true);
    // Nested headings appear as paths of more than one level.
    expect(chunks.some((c) => c.headingPath.length >= 2)).toBe(true);
    expect(run.statistics?.tokenStats?.overBudgetCount).toBe(0);
  });

  it("re-ingest keeps every ID; the same files in another collection get other IDs", async () => {
    const before = (await chunksOf("sample")).map((c) => c.id);
    const again = await ingest("sample");
    expect(again.documents.every((d) => d.unchanged)).toBe(true);
    expect(again.statistics?.chunkChanges?.added).toBe(0);
    expect((await chunksOf("sample")).map((c) => c.id)).toEqual(before);

    const other = await ingest("sample-copy");
    expect(other.status).toBe(IngestRunStatus.SUCCEEDED);
    const copyIds = (await chunksOf("sample-copy")).map((c) => c.id);
    expect(copyIds.length).toBe(before.length);
    expect(copyIds.filter((id) => before.includes(id))).toEqual([]);
  });
});
