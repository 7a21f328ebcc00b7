import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@ragtune/rpc";
import { expectCode } from "@ragtune/testing";
import {
  CollectionDeletedSchema,
  DocumentChunkedSchema,
  DocumentDeletedSchema,
  DocumentErrorReason,
  DocumentStatus,
  FailureKind,
  IngestRunCompletedSchema,
  IngestRunStatus,
  type DocumentSource,
  type TokenizerKind,
  type IngestRunEvent,
} from "@ragtune/proto";
import { startHarness, storedEvents, waitForRun, type Harness } from "./harness.js";

const MAX_BYTES = 20_000;

function paragraph(topic: string, n: number): string {
  return Array.from(
    { length: n },
    (_, i) => `The ${topic} subsystem handles case ${i + 1} by validating the request, recording an audit entry and replying within the configured deadline.`,
  ).join(" ");
}

function guideMarkdown(installBody: string): string {
  return [
    "---",
    "title: Operator Guide",
    "owner: platform-team",
    "---",
    "",
    "# Operator Guide",
    "",
    paragraph("overview", 3),
    "",
    "## Installation",
    "",
    installBody,
    "",
    "### Requirements",
    "",
    paragraph("requirements", 4),
    "",
    "```sh",
    "# not a heading: a comment in a code fence",
    "make install",
    "```",
    "",
    "## Operations",
    "",
    paragraph("operations", 6),
    "",
    "Backups",
    "-------",
    "",
    paragraph("backup", 5),
  ].join("\n");
}

const GUIDE_V1 = guideMarkdown(paragraph("installation", 5));
// The edit grows one section by more than a chunk, so every later chunk moves to a new ordinal.
const GUIDE_V2 = guideMarkdown(`${paragraph("installation", 5)}\n\n${paragraph("offline installer", 4)}`);

const GUIDE_HTML = `<!doctype html><html><head><title>Web Guide</title><script>track()</script></head><body>
<nav>Home · Docs · Blog</nav><header>Site header</header>
<main><h1>Web Guide</h1><p>${paragraph("web", 3)}</p>
<h2>Routing</h2><p>${paragraph("routing", 4)}</p><ul><li>static routes</li><li>dynamic routes</li></ul>
<h3>Rewrites</h3><table><tr><th>from</th><th>to</th></tr><tr><td>/a</td><td>/b</td></tr></table>
<pre><code>rewrite /a /b;</code></pre></main><footer>© footer</footer></body></html>`;

const NOTES_TXT = `${paragraph("notes", 3)}\n\n${paragraph("misc", 2)}`;

const enc = (s: string) => new TextEncoder().encode(s);

function inline(filename: string, content: Uint8Array | string, mediaType = ""): DocumentSource {
  return {
    $typeName: "ragtune.ingest.v1.DocumentSource",
    source: {
      case: "inline",
      value: { $typeName: "ragtune.ingest.v1.InlineDocument", filename, mediaType, content: typeof content === "string" ? enc(content) : content },
    },
  };
}

function serverPath(path: string): DocumentSource {
  return {
    $typeName: "ragtune.ingest.v1.DocumentSource",
    source: { case: "serverPath", value: { $typeName: "ragtune.ingest.v1.ServerPath", path, extensions: [] } },
  };
}

/**
 * Checks a run's event log: gap-free sequences, QUEUED → RUNNING, every document finished exactly once, never
 * reported processing after that (documents are processed several at a time, so they finish in any order; one that
 * started and finished between two saves of the run is reported only finished), completed last.
 */
function expectOrderedEvents(events: IngestRunEvent[], documents: number): void {
  expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
  const kinds = events.map((e) => e.event.case);
  expect(events[0]?.event.value).toMatchObject({ status: IngestRunStatus.QUEUED });
  expect(events[1]?.event.value).toMatchObject({ status: IngestRunStatus.RUNNING });
  expect(kinds.at(-1)).toBe("completed");
  const progress = events.filter((e) => e.event.case === "documentProgress").map((e) => e.event.value as { index: number; result?: { status: DocumentStatus } });
  const finals = progress.filter((p) => p.result?.status === DocumentStatus.READY || p.result?.status === DocumentStatus.FAILED);
  expect(finals.map((p) => p.index).sort((a, b) => a - b)).toEqual(Array.from({ length: documents }, (_, i) => i));
  const processing = new Set<number>();
  const finished = new Set<number>();
  for (const p of progress) {
    if (p.result?.status === DocumentStatus.PROCESSING) {
      expect(finished.has(p.index), `document ${p.index} reported processing after it finished`).toBe(false);
      expect(processing.has(p.index), `document ${p.index} reported processing twice`).toBe(false);
      processing.add(p.index);
    } else {
      finished.add(p.index);
    }
  }
  // The documents the run starts with are in flight when its first save after the start begins.
  expect(processing.size).toBeGreaterThan(0);
}

describe("ingest service: inline documents, incremental re-ingest, bad input, deletes", () => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness({ INGEST_MAX_DOCUMENT_BYTES: String(MAX_BYTES) });
  });
  afterAll(async () => {
    await h?.close();
  });

  let guideId = "";
  let guideChunks: { id: string; headingPath: string[] }[] = [];

  it("ingests inline Markdown, HTML and text; watch shows per-document progress in order", async () => {
    const { run: started } = await h.connect.ingestDocuments({
      collection: "docs",
      sources: [inline("guide.md", GUIDE_V1), inline("web/guide.html", GUIDE_HTML), inline("notes", NOTES_TXT, "text/plain")],
      chunking: { chunkSizeTokens: 64 },
    });
    // Joins while the run is queued or running: history first, then live events.
    const { events, run } = await waitForRun(h.grpc, started!.id);
    expect(run.status).toBe(IngestRunStatus.SUCCEEDED);
    expectOrderedEvents(events, 3);
    expect(run.documents.map((d) => [d.sourceName, d.status])).toEqual([
      ["guide.md", DocumentStatus.READY],
      ["web/guide.html", DocumentStatus.READY],
      ["notes", DocumentStatus.READY],
    ]);
    const completed = events.at(-1)!.event.value as { statistics?: { documentsIngested: number; tokenStats?: { budget: number; max: number } } };
    expect(completed.statistics?.documentsIngested).toBe(3);
    expect(completed.statistics?.tokenStats?.budget).toBe(64);
    expect(completed.statistics?.tokenStats?.max).toBeLessThanOrEqual(64);

    // A late watcher gets the same history; from_sequence skips the start.
    const late: IngestRunEvent[] = [];
    for await (const r of h.connect.watchIngestRun({ runId: run.id })) late.push(r.event!);
    expect(late.map((e) => e.sequence)).toEqual(events.map((e) => e.sequence));
    const tail: number[] = [];
    for await (const r of h.grpc.watchIngestRun({ runId: run.id, fromSequence: 4 })) tail.push(r.event!.sequence);
    expect(tail).toEqual(events.slice(3).map((e) => e.sequence));

    const [runCompleted] = (await storedEvents(h.bus, "ragtune.ingest.run.completed", IngestRunCompletedSchema)).filter((e) => e.ingestRunId === run.id);
    expect(runCompleted?.status).toBe(IngestRunStatus.SUCCEEDED);
    expect(runCompleted?.statistics?.tokenStats?.count).toBe(run.statistics?.tokenStats?.count);

    const docs = (await h.grpc.listDocuments({ collection: "docs" })).documents;
    expect(docs.map((d) => d.sourceName).sort()).toEqual(["guide.md", "notes", "web/guide.html"]);
    const guide = docs.find((d) => d.sourceName === "guide.md")!;
    expect(guide.title).toBe("Operator Guide");
    expect(guide.metadata["owner"]).toBe("platform-team");
    expect(guide.mediaType).toBe("text/markdown");
    expect(docs.find((d) => d.sourceName === "web/guide.html")?.mediaType).toBe("text/html");
    guideId = guide.id;
    const chunks = (await h.connect.listChunks({ documentId: guideId })).chunks;
    guideChunks = chunks.map((c) => ({ id: c.id, headingPath: c.headingPath }));
    const paths = new Set(chunks.map((c) => c.headingPath.join(" > ")));
    expect(paths).toContain("Operator Guide > Installation");
    expect(paths).toContain("Operator Guide > Installation > Requirements");
    expect(paths).toContain("Operator Guide > Backups"); // a setext "---" heading is level 2
    expect([...paths].some((p) => p.includes("not a heading"))).toBe(false);

    // Paging over a document's chunks.
    const first = await h.grpc.listChunks({ documentId: guideId, page: { pageSize: 2 } });
    expect(first.chunks.map((c) => c.id)).toEqual(guideChunks.slice(0, 2).map((c) => c.id));
    expect(first.page?.totalSize).toBe(guideChunks.length);
    const second = await h.grpc.listChunks({ documentId: guideId, page: { pageSize: 2, pageToken: first.page!.nextPageToken } });
    expect(second.chunks.map((c) => c.id)).toEqual(guideChunks.slice(2, 4).map((c) => c.id));
  });

  it("re-ingesting unchanged documents keeps every ID; editing one section changes only its chunks", async () => {
    const same = await h.grpc.ingestDocuments({ collection: "docs", sources: [inline("guide.md", GUIDE_V1)], chunking: { chunkSizeTokens: 64 } });
    const { run: unchanged } = await waitForRun(h.grpc, same.run!.id);
    expect(unchanged.documents[0]).toMatchObject({ unchanged: true, status: DocumentStatus.READY, changes: { added: 0, removed: 0, kept: guideChunks.length } });

    const edited = await h.grpc.ingestDocuments({ collection: "docs", sources: [inline("guide.md", GUIDE_V2)], chunking: { chunkSizeTokens: 64 } });
    const { run } = await waitForRun(h.grpc, edited.run!.id);
    const result = run.documents[0]!;
    expect(result.unchanged).toBe(false);
    expect(result.changes!.added).toBeGreaterThan(0);
    expect(result.changes!.removed).toBeGreaterThan(0);

    const events = (await storedEvents(h.bus, "ragtune.ingest.document.chunked", DocumentChunkedSchema)).filter((e) => e.documentId === guideId);
    expect(events).toHaveLength(2); // first ingest and the edit; the unchanged re-ingest published nothing
    const change = events[1]!;
    expect(change.ingestRunId).toBe(run.id);
    expect(change.eventId).toBe(`${run.id}:${guideId}:${change.chunkSet?.sha256}`);
    const before = new Map(guideChunks.map((c) => [c.id, c.headingPath.join(" > ")]));
    const after = (await h.grpc.listChunks({ documentId: guideId })).chunks;
    expect(after.length).toBeGreaterThan(guideChunks.length);
    const afterPath = new Map(after.map((c) => [c.id, c.headingPath.join(" > ")]));
    // The version an event announces is listed by its chunk set (what a follower of the events reads: the record
    // is written after the event); a replaced version is gone; the chunk set must be this document's.
    expect(change.title).toBe("Operator Guide");
    const announced = (await h.grpc.listChunks({ documentId: guideId, chunkSetSha256: change.chunkSet!.sha256, page: { pageSize: 3 } }));
    expect(announced.chunks.map((c) => c.id)).toEqual(after.slice(0, 3).map((c) => c.id));
    expect(announced.page?.totalSize).toBe(after.length);
    await expectCode(h.grpc.listChunks({ documentId: guideId, chunkSetSha256: events[0]!.chunkSet!.sha256 }), Code.NotFound, "a later version or a delete replaced it");
    await expectCode(h.grpc.listChunks({ documentId: "another-document", chunkSetSha256: change.chunkSet!.sha256 }), Code.NotFound, "another-document");
    await expectCode(h.grpc.listChunks({ documentId: guideId, chunkSetSha256: "ABC" }), Code.InvalidArgument, "chunk_set_sha256");
    // Only the edited section's chunks were removed and added; every other chunk kept its ID.
    expect(change.removedChunkIds.length).toBe(result.changes!.removed);
    expect(change.addedChunkIds.length).toBe(result.changes!.added);
    expect(change.removedChunkIds.every((id) => before.get(id) === "Operator Guide > Installation")).toBe(true);
    expect(change.addedChunkIds.every((id) => afterPath.get(id) === "Operator Guide > Installation")).toBe(true);
    expect(new Set(change.keptChunkIds)).toEqual(new Set(guideChunks.filter((c) => c.headingPath.join(" > ") !== "Operator Guide > Installation").map((c) => c.id)));
    expect(after.map((c) => c.id).sort()).toEqual([...change.addedChunkIds, ...change.keptChunkIds].sort());
    // GetChunk serves the current version of every chunk, kept ones included (offsets may move).
    for (const c of after) {
      const got = (await h.connect.getChunk({ chunkId: c.id })).chunk!;
      expect([got.ordinal, got.charStart, got.charEnd, got.text]).toEqual([c.ordinal, c.charStart, c.charEnd, c.text]);
    }
    for (const id of change.removedChunkIds) await expectCode(h.grpc.getChunk({ chunkId: id }), Code.NotFound, id);
    const doc = (await h.grpc.getDocument({ documentId: guideId })).document!;
    expect(doc.chunkSet?.sha256).toBe(change.chunkSet?.sha256);
    expect(doc.lastIngestRunId).toBe(run.id);

    // Back to the first version inside the duplicate window: downstream must still hear of it (A → B → A).
    const reverted = await h.grpc.ingestDocuments({ collection: "docs", sources: [inline("guide.md", GUIDE_V1)], chunking: { chunkSizeTokens: 64 } });
    await waitForRun(h.grpc, reverted.run!.id);
    const all = (await storedEvents(h.bus, "ragtune.ingest.document.chunked", DocumentChunkedSchema)).filter((e) => e.documentId === guideId);
    expect(all).toHaveLength(3);
    expect(all[2]!.chunkSet?.sha256).toBe(events[0]!.chunkSet?.sha256);
    expect(new Set(all[2]!.addedChunkIds)).toEqual(new Set(change.removedChunkIds));
    // Leave the edited version stored, as the following tests expect.
    const again = await h.grpc.ingestDocuments({ collection: "docs", sources: [inline("guide.md", GUIDE_V2)], chunking: { chunkSizeTokens: 64 } });
    await waitForRun(h.grpc, again.run!.id);
  });

  it("rejects every kind of bad document with a clear per-document error and ingests the rest", async () => {
    await writeFile(join(h.root, "ok.md"), GUIDE_V1.replace("Operator Guide", "Server Guide"));
    await mkdir(join(h.root, "dir"), { recursive: true });
    await writeFile(join(h.root, "dir", "page.html"), GUIDE_HTML);
    await writeFile(join(h.root, "dir", "ignored.bin"), Buffer.from([0, 1, 2]));
    const before = (await h.grpc.getDocument({ documentId: guideId })).document!;
    const png = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]), Buffer.alloc(64, 7)]);
    const { run: started } = await h.connect.ingestDocuments({
      collection: "docs",
      chunking: { chunkSizeTokens: 64 },
      sources: [
        inline("guide.md", new Uint8Array([0x23, 0x20, 0x48, 0xff, 0xfe, 0x41])), // invalid UTF-8 over a stored document
        inline("image.md", png),
        inline("empty.md", ""),
        inline("huge.md", `# Huge\n\n${"word ".repeat(MAX_BYTES / 4)}`),
        inline("report.pdf", "%PDF-1.7 not really"),
        inline("typed", "hello", "application/octet-stream"),
        serverPath("../outside.md"),
        serverPath("/etc/passwd"),
        serverPath("missing.md"),
        serverPath("ok.md"),
        serverPath("dir"),
        inline("fine.txt", NOTES_TXT),
      ],
    });
    const { run, events } = await waitForRun(h.connect, started!.id);
    expect(run.status).toBe(IngestRunStatus.PARTIALLY_SUCCEEDED);
    expectOrderedEvents(events, run.documents.length);
    const byName = new Map(run.documents.map((d) => [d.sourceName, d]));
    const expectFailure = (name: string, reason: DocumentErrorReason, text: string) => {
      const d = byName.get(name);
      expect(d, name).toBeDefined();
      expect(d!.status, name).toBe(DocumentStatus.FAILED);
      expect(DocumentErrorReason[d!.errorReason], name).toBe(DocumentErrorReason[reason]);
      expect(d!.error?.kind, name).toBe(FailureKind.USER_ERROR);
      expect(d!.error?.message, name).toContain(text);
    };
    expectFailure("guide.md", DocumentErrorReason.INVALID_UTF8, "not valid UTF-8");
    expectFailure("image.md", DocumentErrorReason.BINARY_CONTENT, "binary");
    expectFailure("empty.md", DocumentErrorReason.EMPTY, "no text");
    expectFailure("huge.md", DocumentErrorReason.TOO_LARGE, `limit of ${MAX_BYTES} bytes`);
    expectFailure("report.pdf", DocumentErrorReason.UNSUPPORTED_MEDIA_TYPE, "unsupported");
    expectFailure("typed", DocumentErrorReason.UNSUPPORTED_MEDIA_TYPE, "application/octet-stream");
    expectFailure("../outside.md", DocumentErrorReason.PATH_OUTSIDE_ROOT, "outside the allowed root");
    expectFailure("/etc/passwd", DocumentErrorReason.PATH_OUTSIDE_ROOT, "outside the allowed root");
    expectFailure("missing.md", DocumentErrorReason.PATH_NOT_FOUND, "does not exist");
    for (const name of ["ok.md", "dir/page.html", "fine.txt"]) expect(byName.get(name)?.status, name).toBe(DocumentStatus.READY);
    expect(byName.has("dir/ignored.bin")).toBe(false);
    expect(run.statistics?.documentsFailed).toBe(9);
    expect(run.statistics?.documentsIngested).toBe(3);

    // The stored guide.md survived its bad re-ingest untouched.
    const after = (await h.grpc.getDocument({ documentId: guideId })).document!;
    expect(after.status).toBe(DocumentStatus.READY);
    expect(after.chunkSet?.sha256).toBe(before.chunkSet?.sha256);
    expect((await h.grpc.listChunks({ documentId: guideId })).chunks.length).toBe(before.chunkCount);
    // A new document that failed is listed as FAILED with its reason.
    const failed = (await h.grpc.listDocuments({ collection: "docs", status: DocumentStatus.FAILED })).documents;
    expect(failed.map((d) => d.sourceName)).toContain("empty.md");
    expect(failed.every((d) => d.error?.message !== "")).toBe(true);
  });

  it("refuses malformed requests with actionable errors", async () => {
    await expectCode(h.grpc.ingestDocuments({ collection: "docs", sources: [] }), Code.InvalidArgument, "no documents");
    await expectCode(h.connect.ingestDocuments({ sources: [inline("a.md", "# A\n\ntext")], chunking: { chunkSizeTokens: 8 } }), Code.InvalidArgument, "32..8192");
    await expectCode(h.grpc.ingestDocuments({ sources: [inline("a.md", "# A\n\ntext")], chunking: { chunkSizeTokens: 64, chunkOverlapTokens: 40 } }), Code.InvalidArgument, "below half");
    await expectCode(h.grpc.ingestDocuments({ sources: [inline("a.md", "# A\n\ntext")], chunking: { tokenizer: 42 as TokenizerKind } }), Code.InvalidArgument, "unknown tokenizer");
    await expectCode(h.grpc.ingestDocuments({ collection: "Bad Name", sources: [inline("a.md", "x")] }), Code.InvalidArgument, "collection name");
    await expectCode(h.grpc.ingestDocuments({ sources: [inline("a.md", "x"), inline("a.md", "y")] }), Code.InvalidArgument, "appears twice");
    await expectCode(h.grpc.listDocuments({ collection: "nope" }), Code.NotFound, "nope");
    await expectCode(h.connect.getDocument({ documentId: "doc_0000" }), Code.NotFound, "doc_0000");
    await expectCode(h.connect.getDocument({ documentId: "" }), Code.InvalidArgument, "document_id");
    await expectCode(h.grpc.listChunks({}), Code.InvalidArgument, "document_id");
    await expectCode(h.grpc.getIngestRun({ runId: "run_missing" }), Code.NotFound, "run_missing");
    await expectCode(h.grpc.listDocuments({ collection: "docs", page: { pageToken: "garbage" } }), Code.InvalidArgument, "page_token");
    const page = await h.grpc.listDocuments({ collection: "docs", page: { pageSize: 1 } });
    await expectCode(h.grpc.listCollections({ page: { pageToken: page.page!.nextPageToken } }), Code.InvalidArgument, "other filter");
  });

  it("returns the same run for a retried request with the same client_request_id", async () => {
    const req = { collection: "docs", clientRequestId: "retry-1", sources: [inline("notes-2.txt", NOTES_TXT)] };
    const a = await h.grpc.ingestDocuments(req);
    const b = await h.connect.ingestDocuments(req);
    expect(b.run?.id).toBe(a.run?.id);
    await waitForRun(h.grpc, a.run!.id);
  });

  it("resumes a run interrupted by a restart: inline bytes were stored before the call returned", async () => {
    const sources = Array.from({ length: 60 }, (_, i) => inline(`batch/doc-${String(i).padStart(2, "0")}.md`, guideMarkdown(paragraph(`topic${i}`, 4))));
    const { run: started } = await h.grpc.ingestDocuments({ collection: "resume", sources, chunking: { chunkSizeTokens: 64 } });
    await h.restart();
    expect(h.server.instance.resumedRuns).toContain(started!.id);
    const { run, events } = await waitForRun(h.grpc, started!.id);
    expect(run.status).toBe(IngestRunStatus.SUCCEEDED);
    expect(run.documents.map((d) => d.sourceName)).toEqual(sources.map((s) => (s.source.value as { filename: string }).filename));
    // Gap-free, and every document finished exactly once across the two instances.
    expectOrderedEvents(events, 60);
    expect((await h.grpc.listDocuments({ collection: "resume" })).page?.totalSize).toBe(60);
  });

  it("deletes a document and a whole collection, and tells downstream", async () => {
    const chunks = (await h.grpc.listChunks({ documentId: guideId })).chunks;
    const deleted = await h.grpc.deleteDocument({ documentId: guideId });
    expect(deleted.chunksRemoved).toBe(chunks.length);
    await expectCode(h.grpc.getDocument({ documentId: guideId }), Code.NotFound, guideId);
    await expectCode(h.grpc.getChunk({ chunkId: chunks[0]!.id }), Code.NotFound, chunks[0]!.id);
    const [docEvent] = (await storedEvents(h.bus, "ragtune.ingest.document.deleted", DocumentDeletedSchema)).filter((e) => e.documentId === guideId);
    expect(new Set(docEvent?.removedChunkIds)).toEqual(new Set(chunks.map((c) => c.id)));
    await expectCode(h.grpc.deleteDocument({ documentId: guideId }), Code.NotFound, guideId);

    const remaining = (await h.grpc.listDocuments({ collection: "docs" })).documents;
    const collection = await h.connect.deleteCollection({ collection: "docs" });
    expect(collection.documentsRemoved).toBe(remaining.length);
    expect((await h.grpc.listCollections({})).collections.map((c) => c.name)).not.toContain("docs");
    await expectCode(h.grpc.listDocuments({ collection: "docs" }), Code.NotFound, "docs");
    for (const d of remaining) await expectCode(h.grpc.getDocument({ documentId: d.id }), Code.NotFound, d.id);
    const [colEvent] = (await storedEvents(h.bus, "ragtune.ingest.collection.deleted", CollectionDeletedSchema)).filter((e) => e.collection === "docs");
    expect(new Set(colEvent?.removedDocumentIds)).toEqual(new Set(remaining.map((d) => d.id)));
    // Other collections are untouched.
    expect((await h.grpc.listDocuments({ collection: "resume" })).page?.totalSize).toBe(60);
  });
});
