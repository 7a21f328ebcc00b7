import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DocumentErrorReason, DocumentStatus, FailureKind, IngestRunStatus, type DocumentSource } from "@ragtune/proto";
import { ServingStatus } from "@ragtune/rpc";
import { seededRandom } from "@ragtune/testing";
import { loadTokenizer } from "@ragtune/text";
import { grpcJsHealthCheck, startHarness, waitForRun, type Harness, type IngestClient } from "./harness.js";

const inline = (filename: string, content: string): DocumentSource => ({
  $typeName: "ragtune.ingest.v1.DocumentSource",
  source: { case: "inline", value: { $typeName: "ragtune.ingest.v1.InlineDocument", filename, mediaType: "", content: new TextEncoder().encode(content) } },
});

/** A base64 blob as one word (a minified script, an inline image): no space, no newline. */
function base64Word(length: number, seed: number): string {
  const random = seededRandom(seed);
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const out: string[] = [];
  for (let i = 0; i < length; i++) out.push(alphabet[Math.floor(random() * alphabet.length)]!);
  return out.join("");
}

const RUNBOOK = "# Runbook\n\n## Drain\n\nDrain the node, wait for the queue to empty, then restart the service.\n";

async function chunksOf(client: IngestClient, documentId: string) {
  return (await client.listChunks({ documentId, page: { pageSize: 1000 } })).chunks;
}

describe("hostile documents against the real service", () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  it("chunks a 300,000-character word and a 200,000-word line, and refuses HTML nested 20,000 deep saying why", async () => {
    const word = base64Word(300_000, 16);
    const random = seededRandom(200);
    const vocabulary = ["replica", "ledger", "the", "of", "bucket", "writes", "node", "and"];
    const line = Array.from({ length: 200_000 }, () => vocabulary[Math.floor(random() * vocabulary.length)]!).join(" ");
    const { run: started } = await h.grpc.ingestDocuments({
      collection: "hostile",
      sources: [
        inline("blob.md", `# Inline image\n\n${word}\n`),
        inline("log.md", `# Log\n\n${line}\n`),
        inline("deep.html", `<html><body>${"<div>".repeat(20_000)}deep${"</div>".repeat(20_000)}</body></html>`),
        inline("runbook.md", RUNBOOK),
      ],
    });
    const { run } = await waitForRun(h.grpc, started!.id);
    expect(run.status).toBe(IngestRunStatus.PARTIALLY_SUCCEEDED);
    const [blob, log, deep, runbook] = run.documents;
    for (const d of [blob, log, runbook]) expect(d?.status, d?.sourceName).toBe(DocumentStatus.READY);
    expect(deep?.status).toBe(DocumentStatus.FAILED);
    expect(DocumentErrorReason[deep!.errorReason]).toBe("PARSE_FAILED");
    expect(deep?.error?.message).toMatch(/^deep\.html: the HTML nests elements too deeply/);

    // Every chunk of the long word within the budget with its exact count (libs/text checks the counter against the
    // reference on such words); together they are the word.
    const blobChunks = await chunksOf(h.grpc, blob!.documentId);
    const mistral = loadTokenizer("mistral");
    expect(blobChunks.filter((c) => c.tokenCount > 512 || mistral.count(c.text) !== c.tokenCount)).toEqual([]);
    expect(blobChunks.map((c) => c.text).join("").replace(/^Inline image(\n\n)?/, "")).toBe(word);
    const logChunks = await chunksOf(h.grpc, log!.documentId);
    expect(logChunks.length).toBe(log!.chunkCount);
    expect(logChunks.every((c) => c.tokenCount <= 512)).toBe(true);
    expect(logChunks.flatMap((c) => c.text.split(/\s+/)).filter((w) => w !== "Log")).toEqual(line.split(" "));
  });
});

describe("a document over the time limit", () => {
  let h: Harness;
  // 300 ms against a document that takes seconds (an 8 MB run of words with no sentence in it, about a second per MB
  // on a 2-core machine): far over the limit on any machine. A runbook of one paragraph takes a few milliseconds.
  beforeAll(async () => {
    h = await startHarness({ INGEST_DOCUMENT_TIMEOUT: "300ms", INGEST_WORKERS: "1" });
  });
  afterAll(async () => {
    await h?.close();
  });

  it("fails with reason TIMEOUT, the worker is replaced, and the service goes on with the batch and answers", async () => {
    const words: string[] = [];
    for (let i = 0; i < 100; i++) words.push(base64Word(80_000, i));
    const { run: started } = await h.grpc.ingestDocuments({
      collection: "slow",
      sources: [inline("minified.md", `# Bundle\n\n${words.join(" ")}\n`), inline("runbook.md", RUNBOOK)],
    });
    const { run } = await waitForRun(h.grpc, started!.id);
    expect(run.status).toBe(IngestRunStatus.PARTIALLY_SUCCEEDED);
    const [minified, runbook] = run.documents;
    expect(minified?.status).toBe(DocumentStatus.FAILED);
    expect(DocumentErrorReason[minified!.errorReason]).toBe("TIMEOUT");
    expect(minified?.error).toMatchObject({ kind: FailureKind.USER_ERROR, reason: "TIMEOUT" });
    expect(minified?.error?.message).toMatch(/^minified\.md: parsing and chunking took longer than the limit of 300 ms \(INGEST_DOCUMENT_TIMEOUT\)/);
    // The one worker was replaced: the next document was chunked.
    expect(runbook?.status).toBe(DocumentStatus.READY);
    expect((await chunksOf(h.grpc, runbook!.documentId)).map((c) => c.headingPath.join(" > "))).toEqual(["Runbook > Drain"]);
    const failed = (await h.grpc.listDocuments({ collection: "slow", status: DocumentStatus.FAILED })).documents;
    expect(failed.map((d) => [d.sourceName, DocumentErrorReason[d.errorReason]])).toEqual([["minified.md", "TIMEOUT"]]);
    expect((await grpcJsHealthCheck(`127.0.0.1:${h.server.port}`, "ragtune.ingest.v1.IngestService")).status).toBe(ServingStatus.SERVING);
  });
});
