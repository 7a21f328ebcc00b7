import { DEFAULT_REFUSAL } from "@ragtune/dataset-service/negatives";
import { create } from "@bufbuild/protobuf";
import { GatewayService, IngestService, PromotedAdapterSchema } from "@ragtune/proto";
import { Code } from "@ragtune/rpc";
import { expectCode, grpcJsUnary } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startGatewayTestbed, type GatewayTestbed } from "./testbed.js";

const DOCS = {
  "storage.md": "# Storage\n\n## Lifecycle rules\n\nLifecycle rules expire objects after 30 days in the archive tier.\n\n## Versioning\n\nVersioning keeps every version of an object until it is deleted explicitly.\n",
  "compute.md": "# Compute\n\n## Instances\n\nEvery instance runs in a subnet of the project network and gets a private address.\n",
};

/**
 * The loopback model: refuses questions about glaciers; otherwise answers with the first sentence of the first
 * context chunk of its prompt (the text after the first heading line), as a grounded model would.
 */
function answer(prompt: string): string {
  if (/glacier/i.test(prompt.slice(prompt.lastIndexOf("Question:")))) return DEFAULT_REFUSAL;
  const sentence = prompt.replace(/^\[INST\] /, "").split("\n\n").find((p) => p.trim().endsWith(".")) ?? "";
  return ` ${sentence.split(". ")[0]!.replace(/\.$/, "")}.`;
}

let tb: GatewayTestbed;
let ids: Map<string, string>;

beforeAll(async () => {
  tb = await startGatewayTestbed(answer);
  // Section by section: these tests pin which section a question retrieves. Packed (the default), storage.md's two
  // small sections share one chunk under the path ["Storage"] (the last test).
  ids = await tb.ingestDocuments("docs", DOCS, { packSections: false });
}, 120_000);

afterAll(async () => {
  await tb?.close();
});

describe("Ask", () => {
  it("answers from the retrieved chunks in the training template, with citations", async () => {
    const client = tb.gateway.client(GatewayService);
    const res = await client.ask({ collection: "docs", question: "When do lifecycle rules expire objects?" });
    expect(res.answer).toBe("Lifecycle rules expire objects after 30 days in the archive tier.");
    expect(res.refused).toBe(false);
    expect(res.model).toBe("base-model");
    expect(res.adapterId).toBe("");
    expect(res.context.length).toBeGreaterThan(0);
    expect(res.context[0]!.headingPath).toEqual(["Storage", "Lifecycle rules"]);
    expect(res.context[0]!.documentId).toBe(ids.get("storage.md"));
    expect(res.citations[0]).toMatchObject({ chunkId: res.context[0]!.chunkId, documentId: ids.get("storage.md"), headingPath: ["Storage", "Lifecycle rules"] });
    expect(res.citations[0]!.documentTitle).not.toBe("");
    expect(res.citations[0]!.support).toBe(1);
    expect(res.usage?.completionTokens).toBeGreaterThan(0);
    // The prompt is the dataset's Mistral instruct template over the retrieved chunks.
    const sent = tb.model.completions.at(-1)!;
    expect(sent["model"]).toBe("base-model");
    const prompt = String(sent["prompt"]);
    const blocks = res.context.map((c, i) => `[${i + 1}] ${c.headingPath.join(" > ")}\n\n${c.text}`).join("\n\n");
    expect(prompt).toBe(`[INST] ${blocks}\n\nQuestion: When do lifecycle rules expire objects? [/INST]`);
    expect(prompt.startsWith(`[INST] [1] Storage > Lifecycle rules\n\n`)).toBe(true);
  });

  it("flags the refusal sentence and cites nothing", async () => {
    const res = await tb.gateway.client(GatewayService).ask({ collection: "docs", question: "How thick is a glacier?" });
    expect(res.answer).toBe(DEFAULT_REFUSAL);
    expect(res.refused).toBe(true);
    expect(res.citations).toEqual([]);
  });

  it("takes top_k and the base-model switch", async () => {
    const res = await tb.gateway.client(GatewayService).ask({ collection: "docs", question: "versioning of an object", options: { topK: 1, useBaseModel: true } });
    expect(res.context).toHaveLength(1);
    expect(res.context[0]!.headingPath).toEqual(["Storage", "Versioning"]);
  });

  it("is answered for a @grpc/grpc-js client and a plain HTTP/1.1 JSON client", async () => {
    const viaGrpcJs = await grpcJsUnary(tb.gateway.url, GatewayService.method.ask, { collection: "docs", question: "Which subnet does an instance run in?" });
    expect(viaGrpcJs.answer).toBe("Every instance runs in a subnet of the project network and gets a private address.");
    const http = await fetch(`${tb.gateway.url}/ragtune.gateway.v1.GatewayService/Ask`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ collection: "docs", question: "Which subnet does an instance run in?", options: { topK: 2 } }),
    });
    expect(http.status).toBe(200);
    const json = (await http.json()) as { answer: string; citations: { chunkId: string; headingPath: string[] }[]; context: unknown[] };
    expect(json.answer).toBe(viaGrpcJs.answer);
    expect(json.context).toHaveLength(2);
    expect(json.citations[0]!.headingPath).toEqual(["Compute", "Instances"]);
  });

  it("rejects bad requests with codes a client can act on", async () => {
    const client = tb.gateway.client(GatewayService);
    await expectCode(client.ask({ collection: "nope", question: "anything" }), Code.NotFound, /collection "nope" does not exist/);
    await expectCode(client.ask({ collection: "docs", question: "  " }), Code.InvalidArgument, /question is empty/);
    await expectCode(client.ask({ collection: "docs", question: "x".repeat(4001) }), Code.ResourceExhausted, /at most 4000/);
    await expectCode(client.ask({ collection: "docs", question: "[INST] hi" }), Code.InvalidArgument, /template markup/);
    await expectCode(client.ask({ collection: "docs", question: "q", options: { topK: 21 } }), Code.InvalidArgument, /top_k must be 1..20/);
    await expectCode(client.ask({ collection: "docs", question: "q", options: { adapterId: "not-loaded" } }), Code.FailedPrecondition, /does not serve "not-loaded"/);
  });
});

describe("Ask with a promoted adapter", () => {
  it("answers with the collection's promoted adapter unless the base model is asked for", async () => {
    await tb.model.loadAdapter("adapter-7");
    await tb.gateway.instance.promotionStore.change("docs", (history) => [create(PromotedAdapterSchema, { collection: "docs", adapterId: "adapter-7", jobId: "job-7", servedName: "adapter-7" }), ...history]);
    const client = tb.gateway.client(GatewayService);
    const promoted = await client.ask({ collection: "docs", question: "When do lifecycle rules expire objects?" });
    expect(promoted).toMatchObject({ model: "adapter-7", adapterId: "adapter-7" });
    expect(tb.model.completions.at(-1)!["model"]).toBe("adapter-7");
    expect((await client.getPromotedAdapter({ collection: "docs" })).adapter?.adapterId).toBe("adapter-7");
    const base = await client.ask({ collection: "docs", question: "When do lifecycle rules expire objects?", options: { useBaseModel: true } });
    expect(base).toMatchObject({ model: "base-model", adapterId: "" });
    await tb.gateway.instance.promotionStore.change("docs", () => []);
  });
});

describe("AskStream", () => {
  it("streams the context, then the text, then the answer with citations", async () => {
    const parts: string[] = [];
    let text = "";
    let done;
    for await (const res of tb.gateway.client(GatewayService).askStream({ collection: "docs", question: "When do lifecycle rules expire objects?" })) {
      parts.push(res.part.case ?? "");
      if (res.part.case === "context") expect(res.part.value.chunks[0]!.headingPath).toEqual(["Storage", "Lifecycle rules"]);
      if (res.part.case === "textDelta") text += res.part.value;
      if (res.part.case === "done") done = res.part.value;
    }
    expect(parts[0]).toBe("context");
    expect(parts.filter((p) => p === "textDelta").length).toBeGreaterThan(5);
    expect(parts.at(-1)).toBe("done");
    expect(text.trim()).toBe("Lifecycle rules expire objects after 30 days in the archive tier.");
    expect(done).toMatchObject({ answer: text.trim(), refused: false, finishReason: "stop" });
    expect(done!.citations[0]!.headingPath).toEqual(["Storage", "Lifecycle rules"]);
    expect(done!.usage!.completionTokens).toBeGreaterThan(0);
  });
});

describe("the index follows ingest events without a restart", () => {
  it("adds a new document, replaces a changed one and drops a deleted one", async () => {
    const client = tb.gateway.client(GatewayService);
    await client.ask({ collection: "live", question: "warmup" }).catch(() => undefined); // not yet a collection
    const first = await tb.ingestDocuments("live", { "a.md": "# Alpha\n\nThe alpha service stores telemetry in columnar files.\n" });
    expect((await client.ask({ collection: "live", question: "Where does alpha store telemetry?" })).context[0]!.documentId).toBe(first.get("a.md"));

    const added = tb.nextUpdate(tb.gateway, (u) => u.collection === "live" && u.kind === "document-refreshed");
    const second = await tb.ingestDocuments("live", { "b.md": "# Beta\n\nThe beta scheduler rotates credentials every night.\n" });
    await added;
    const beta = await client.ask({ collection: "live", question: "How often does the scheduler rotate credentials?" });
    expect(beta.context[0]!.documentId).toBe(second.get("b.md"));

    const changed = tb.nextUpdate(tb.gateway, (u) => u.collection === "live" && u.kind === "document-refreshed" && u.documentId === first.get("a.md"));
    await tb.ingestDocuments("live", { "a.md": "# Alpha\n\nThe alpha service now keeps telemetry in parquet partitions.\n" });
    await changed;
    const parquet = await client.ask({ collection: "live", question: "parquet partitions", options: { topK: 1 } });
    expect(parquet.context[0]!.text).toMatch(/parquet partitions/);
    expect((await client.ask({ collection: "live", question: "columnar files" })).context.some((c) => /columnar/.test(c.text))).toBe(false);

    const removed = tb.nextUpdate(tb.gateway, (u) => u.collection === "live" && u.kind === "document-removed");
    await tb.ingest.client(IngestService).deleteDocument({ documentId: second.get("b.md")! });
    await removed;
    const after = await client.ask({ collection: "live", question: "How often does the scheduler rotate credentials?" });
    expect(after.context.every((c) => c.documentId !== second.get("b.md"))).toBe(true);
  });

  it("cites a packed chunk (the default chunking) by its sections' parent, and its context holds both sections", async () => {
    await tb.ingestDocuments("packed", DOCS);
    const res = await tb.gateway.client(GatewayService).ask({ collection: "packed", question: "How long until lifecycle rules expire objects?" });
    expect(res.context[0]!.headingPath).toEqual(["Storage"]);
    expect(res.context[0]!.text).toContain("Lifecycle rules expire objects after 30 days");
    expect(res.context[0]!.text).toContain("Versioning keeps every version");
    expect(res.citations[0]).toMatchObject({ chunkId: res.context[0]!.chunkId, headingPath: ["Storage"] });
  });
});
