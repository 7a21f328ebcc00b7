import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EvalRunStatus, EvalService } from "@ragtune/proto";
import { createLogger } from "@ragtune/logger";
import { type ModelServer, startModelServer } from "@ragtune/model-server";
import { startTestService } from "@ragtune/rpc";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTinyModels } from "../../../tools/model-server/src/tiny-models.js";
import { evalConfigSchema } from "../src/config.js";
import { startEvalService } from "../src/server.js";

/** Six items in the shape the dataset exports (contexts short enough for the tiny model's context). */
const ITEMS = [
  ["q1", "Where does Musca store data?", "Musca stores data in Postgres.", true],
  ["q2", "Which port does Musca use?", "Musca listens on port 8443.", true],
  ["q3", "How often does Musca back up?", "Musca backs up every night.", true],
  ["q4", "Who maintains Musca?", "The platform team maintains Musca.", true],
  ["q5", "What does Musca cost?", "The provided context does not contain sufficient information to answer this question.", false],
  ["q6", "Where is Musca hosted?", "The provided context does not contain sufficient information to answer this question.", false],
].map(([id, question, reference, answerable]) => ({
  id,
  question,
  reference,
  answerable,
  context: answerable ? `${String(reference)} It is documented in the runbook.` : "Musca is documented in the runbook.",
  question_type: answerable ? "factual" : "unanswerable",
  source_document: "musca.md",
}));

let root: string;
let nats: NatsServerHandle;
let server: ModelServer;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "eval-model-server-"));
  const tiny = await makeTinyModels(root);
  server = await startModelServer({
    model: tiny.model,
    servedModelName: "tiny",
    loraModules: [{ name: "tiny-adapter", path: tiny.adapter }],
    port: 0,
    concurrency: 2,
    contextSize: 512,
    logger: createLogger({ svc: "model-server", level: "silent" }),
  });
  nats = await startNatsServer();
}, 300_000);

afterAll(async () => {
  await server?.close();
  await nats?.stop();
  if (root !== undefined) await rm(root, { recursive: true, force: true });
});

describe("eval on the local model server (tiny model + a trainer-produced adapter)", () => {
  it("answers every item with base and adapter, gets different outputs, judges with guided JSON and reports completely", async () => {
    const service = await startTestService({
      definition: { name: "eval", schema: evalConfigSchema, start: startEvalService },
      nats,
      env: { LLM_BASE_URL: server.baseUrl, LLM_TIMEOUT: "120s" },
    });
    try {
      const client = service.client(EvalService);
      const { run: created } = await client.createEvalRun({
        source: { case: "evalFile", value: { name: "musca.jsonl", jsonl: new TextEncoder().encode(ITEMS.map((i) => JSON.stringify(i)).join("\n")) } },
        baseModel: "tiny",
        adapters: ["tiny-adapter"],
        sampling: { maxTokens: 24 },
        concurrency: 2,
        judge: { model: "tiny" },
      });
      for await (const res of client.watchEvalRun({ evalRunId: created!.id })) void res;
      const run = (await client.getEvalRun({ evalRunId: created!.id })).run!;
      expect(run.status, run.failure?.message).toBe(EvalRunStatus.SUCCEEDED);
      expect(run.answersDone).toBe(12);
      const report = run.report!;
      expect(report.models.map((m) => [m.model, m.items, m.failed])).toEqual([
        ["tiny", 6, 0],
        ["tiny-adapter", 6, 0],
      ]);
      for (const m of report.models) {
        expect(m.latencyP50).toBeGreaterThan(0);
        // Every answer was graded by the judge (guided JSON through the real server's grammar).
        expect(m.judgeARate).toBeDefined();
      }
      // The server reports usage: tokens per second of the models that wrote anything.
      expect(report.models.some((m) => m.tokensPerSecond > 0)).toBe(true);
      expect(report.differences.map((d) => d.metric)).toContain("success_rate");
      expect(report.breakdowns.length).toBeGreaterThan(0);
      expect(report.gates.map((g) => g.name)).toEqual(["success_gain", "false_answer_rate"]);

      const { results } = await client.listEvalItemResults({ evalRunId: run.id, page: { pageSize: 100 } });
      const differing = results.filter((r) => r.answers[0]!.text !== r.answers[1]!.text);
      expect(differing.length, "the adapter changes the tiny model's answers").toBeGreaterThan(0);
      for (const r of results) for (const a of r.answers) expect(["stop", "length"]).toContain(a.finishReason);

      const { markdown } = await client.getEvalReport({ evalRunId: run.id });
      expect(markdown).toContain("| tiny (base) |");
      expect(markdown).toContain("| tiny-adapter |");
    } finally {
      await service.stop();
    }
  });
});
