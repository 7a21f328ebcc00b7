import { create, fromBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { connectBus, type Bus } from "@ragtune/bus";
import { DEFAULT_REFUSAL } from "@ragtune/dataset-service/negatives";
import { createLogger } from "@ragtune/logger";
import {
  type CreateEvalRunRequest,
  CreateEvalRunRequestSchema,
  EvalGatePassedSchema,
  EvalPromptFormat,
  type EvalRun,
  EvalRunCompletedSchema,
  type EvalRunEvent,
  EvalRunStatus,
  EvalService,
} from "@ragtune/proto";
import { startTestService, type TestService } from "@ragtune/rpc";
import { expectCode, freePort, startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { evalConfigSchema } from "../src/config.js";
import { evalServiceStarter, type EvalInstance, type EvalServiceHooks } from "../src/server.js";
import { type Behaviour, startLoopbackEndpoint, type LoopbackEndpoint } from "./loopback-endpoint.js";

type EvalTestService = TestService<ReturnType<typeof evalConfigSchema.parse>, EvalInstance>;

/** 10 items: 8 answerable (the answer is the context's first sentence), 2 unanswerable. */
const ITEMS = [
  ["backup-keep", "How long are backups kept?", "Backups are kept for thirty days in the archive bucket.", "Restores take about one hour per terabyte."],
  ["backup-time", "When do backups run?", "Backups run every night at two o'clock.", "Each run writes a manifest file next to the data."],
  ["restore-speed", "How fast is a restore?", "A restore takes about one hour per terabyte.", "Restores can be paused from the console."],
  ["port", "Which port does the agent use?", "The agent listens on port 8443 for TLS traffic.", "The port can be changed in agent.yaml."],
  ["tokens", "How long do API tokens live?", "API tokens expire after ninety days of inactivity.", "Expired tokens are removed by a nightly job."],
  ["regions", "Which regions are supported?", "The service runs in Frankfurt, Dublin and Stockholm.", "New regions are announced in the release notes."],
  ["limits", "What is the upload size limit?", "Uploads are limited to five gigabytes per file.", "Larger files must be split by the client."],
  ["audit", "Where are audit logs stored?", "Audit logs are stored in a write-once bucket for one year.", "Only administrators can read audit logs."],
  ["pricing", "How much does the premium plan cost?", DEFAULT_REFUSAL, "The premium plan adds priority support and SSO."],
  ["ceo", "Who founded the company?", DEFAULT_REFUSAL, "The company publishes a yearly transparency report."],
].map(([id, question, reference, rest], i) => {
  const answerable = reference !== DEFAULT_REFUSAL;
  return {
    id,
    question,
    reference,
    answerable,
    context: answerable ? `${reference} ${rest}` : rest,
    heading_path: ["Guide", i < 5 ? "Operations" : "Platform"],
    question_type: answerable ? (i % 2 === 0 ? "factual" : "conceptual") : "unanswerable",
    source_document: i < 5 ? "ops.md" : "platform.md",
  };
});
const EVAL_FILE = new TextEncoder().encode(ITEMS.map((i) => JSON.stringify(i)).join("\n"));
const BY_QUESTION = new Map(ITEMS.map((i) => [i.question, i]));

/** The trained adapter: the reference for answerable items, the refusal otherwise. */
const adapter: Behaviour = (q) => ({ text: BY_QUESTION.get(q)?.reference ?? "unknown question" });
/** The base model the way the seed saw it fail: empty output, newline garbage, invented follow-ups, rambling. */
const base: Behaviour = (q) => {
  const item = BY_QUESTION.get(q)!;
  const i = ITEMS.indexOf(item);
  if (!item.answerable) return { text: "The premium plan costs 49 euros per month and was founded in 2009." };
  if (i % 4 === 0) return { text: "" };
  if (i % 4 === 1) return { text: "\n\n\n\n\n\n\n" };
  if (i % 4 === 2) return { text: `${item.reference}\n\nQuestion: What else can I configure?` };
  return { text: "Please refer to the documentation for details about this topic and many others besides it, which are described elsewhere.", finishReason: "length" };
};
/** A judge grading answers that start with the reference A (so it accepts the base's answers with a follow-up question, which the rule fails), others C. */
const judge: Behaviour = (_q, body) => {
  const user = (body["messages"] as { content: string }[])[1]!.content;
  const reference = /Reference answer: ([^\n]*)/.exec(user)![1]!;
  const answer = /Answer to grade:\n([\s\S]*)$/.exec(user)![1]!;
  const good = answer.trim().startsWith(reference.trim());
  return { text: JSON.stringify({ grade: good ? "A" : "C", hallucination: !good && answer !== "(empty)" }) };
};

let nats: NatsServerHandle;
let bus: Bus;
let endpoint: LoopbackEndpoint;
let service: EvalTestService;

function startEval(env: Record<string, string> = {}, hooks: EvalServiceHooks = {}): Promise<EvalTestService> {
  return startTestService({
    definition: { name: "eval", schema: evalConfigSchema, start: evalServiceStarter(hooks) },
    nats,
    env: { LLM_BASE_URL: endpoint.url, LLM_MAX_RETRIES: "0", LLM_TIMEOUT: "2s", EVAL_RUN_LEASE: "1s", ...env },
  });
}

function request(init: MessageInitShape<typeof CreateEvalRunRequestSchema>): CreateEvalRunRequest {
  return create(CreateEvalRunRequestSchema, init);
}

async function finished(s: EvalTestService, id: string): Promise<{ run: EvalRun; events: EvalRunEvent[] }> {
  const client = s.client(EvalService);
  const events: EvalRunEvent[] = [];
  for await (const res of client.watchEvalRun({ evalRunId: id })) events.push(res.event!);
  return { run: (await client.getEvalRun({ evalRunId: id })).run!, events };
}

beforeAll(async () => {
  nats = await startNatsServer();
  bus = await connectBus({ servers: nats.url, name: "eval-test", logger: createLogger({ svc: "eval-test", level: "silent" }) });
  await bus.ensureEventsStream();
  endpoint = await startLoopbackEndpoint({
    base,
    "qa-adapter": adapter,
    judge,
    flaky: (q) =>
      q === "How long are backups kept?"
        ? { status: 500, message: "CUDA out of memory" }
        : q === "Which port does the agent use?"
          ? { status: 400, message: "prompt too long" }
          : q === "How fast is a restore?"
            ? { hang: true }
            : adapter(q, {}),
  });
  service = await startEval();
});

afterAll(async () => {
  await service?.stop();
  await endpoint?.close();
  await bus?.close();
  await nats?.stop();
});

describe("eval runs", () => {
  it("asks the judge only where the deterministic checks cannot decide, k times with its agreement reported", async () => {
    const client = service.client(EvalService);
    await expect(client.createEvalRun(request({ source: { case: "evalFile", value: { name: "ops.jsonl", jsonl: EVAL_FILE } }, baseModel: "base", judge: { model: "judge", samples: 12 } }))).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
    const before = endpoint.requests.length;
    const { run: created } = await client.createEvalRun(
      request({
        source: { case: "evalFile", value: { name: "ops.jsonl", jsonl: EVAL_FILE } },
        baseModel: "base",
        adapters: ["qa-adapter"],
        concurrency: 4,
        judge: { model: "judge", onlyUndecided: true, samples: 3 },
        collection: "docs",
      }),
    );
    const { run } = await finished(service, created!.id);
    expect(run.status, run.failure?.message).toBe(EvalRunStatus.SUCCEEDED);
    const [b, a] = run.report!.models;
    // The adapter answers with the references and the refusal: every verdict comes from the checks.
    expect(a).toMatchObject({ judgeGraded: 0, judgeDecided: 10, judgeARate: 1 });
    // The base: 2 empty and 2 newline-only answers are decided (C); the follow-ups, cut-offs and invented answers go
    // to the judge, 3 seeded samples each, which agree every time.
    expect(b).toMatchObject({ judgeGraded: 6, judgeDecided: 4, judgeAgreement: 1, judgeARate: 0.2 });
    const judged = endpoint.requests.slice(before).filter((r) => r.body["model"] === "judge");
    expect(judged).toHaveLength(18);
    expect(new Set(judged.map((r) => `${r.body["temperature"]}:${r.body["seed"]}`))).toEqual(new Set(["0.7:1", "0.7:2", "0.7:3"]));
  });

  it("compares base and adapter on an uploaded eval file: complete report, judge agreement, gates passed, events", async () => {
    const client = service.client(EvalService);
    const completed: unknown[] = [];
    const gatePassed: unknown[] = [];
    const { run: created } = await client.createEvalRun(
      request({
        source: { case: "evalFile", value: { name: "ops.jsonl", jsonl: EVAL_FILE } },
        baseModel: "base",
        adapters: ["qa-adapter"],
        concurrency: 4,
        judge: { model: "judge" },
        collection: "docs",
      }),
    );
    expect(created!.status).toBe(EvalRunStatus.QUEUED);
    expect(created!.sampling).toMatchObject({ temperature: 0, maxTokens: 200 });
    expect(created!.promptFormat).toBe(EvalPromptFormat.COMPLETION);
    const { run, events } = await finished(service, created!.id);
    expect(run.status, run.failure?.message).toBe(EvalRunStatus.SUCCEEDED);
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
    expect(events.at(-1)!.event.case).toBe("statusChanged");
    expect(run.answersDone).toBe(20);
    expect(run.answersFailed).toBe(0);

    // The prompts are the training template's, temperature 0 and max_tokens 200.
    const sent = endpoint.requests.find((r) => r.path === "/v1/completions")!.body;
    expect(sent["prompt"]).toMatch(/^\[INST\] Guide > (Operations|Platform)\n\n[\s\S]+\n\nQuestion: .+ \[\/INST\]$/);
    expect(sent).toMatchObject({ temperature: 0, max_tokens: 200 });

    const report = run.report!;
    const [b, a] = report.models;
    expect(b).toMatchObject({ model: "base", isBase: true, items: 10, failed: 0 });
    expect(a).toMatchObject({ model: "qa-adapter", isBase: false, items: 10, successRate: 1, tokenF1: 1, rougeL: 1, exactMatch: 1, grounding: 1, answerRate: 0.8, falseAnswerRate: 0, overRefusalRate: 0 });
    // base: 2 empty (i 0, 4), 2 newline garbage (1, 5), 2 follow-ups (2, 6), 2 cut off (3, 7), 2 invented answers to unanswerable items.
    expect(b).toMatchObject({ successRate: 0, falseAnswerRate: 1, emptyRate: 0.2, degenerateRate: 0.2, followUpRate: 0.2, lengthCutoffRate: 0.2 });
    expect(b!.latencyP50).toBeGreaterThan(0);
    expect(a!.tokensPerSecond).toBeGreaterThan(0);
    // The judge agrees with every rule verdict of the adapter (κ 1); on the base it grades the 2 follow-up answers A
    // that the rule fails: agreement 0.8, chance agreement 0.2·0 + 0.8·1 = 0.8, so κ = 0.
    expect(a!.judgeARate).toBe(1);
    expect(b!.judgeARate).toBe(0.2);
    expect(a!.judgeKappa).toBe(1);
    expect(b!.judgeKappa).toBeCloseTo(0, 10);
    expect(report.differences.find((d) => d.metric === "success_rate")).toMatchObject({ model: "qa-adapter", baseline: "base", delta: 1, items: 10 });
    expect(report.breakdowns.filter((x) => x.dimension === "source_document").map((x) => `${x.value}/${x.model}`)).toEqual([
      "ops.md/base",
      "ops.md/qa-adapter",
      "platform.md/base",
      "platform.md/qa-adapter",
    ]);
    expect(report.gates.map((g) => [g.name, g.passed])).toEqual([
      ["success_gain", true],
      ["false_answer_rate", true],
    ]);
    expect(report.gatesPassed).toBe(true);

    const { markdown } = await client.getEvalReport({ evalRunId: run.id });
    expect(markdown).toContain("## Promotion gates: PASSED");
    expect(markdown).toContain("| qa-adapter | success_rate | +100.0 |");
    const items = await client.listEvalItemResults({ evalRunId: run.id, page: { pageSize: 3 } });
    expect(items.results).toHaveLength(3);
    expect(items.page!.totalSize).toBe(10);
    expect(items.results[0]!.answers.map((x) => x.model)).toEqual(["base", "qa-adapter"]);

    // The catalog events: completed and gate passed.
    for (const [schema, into] of [
      [EvalRunCompletedSchema, completed],
      [EvalGatePassedSchema, gatePassed],
    ] as const) {
      const subject = schema === EvalRunCompletedSchema ? "ragtune.eval.run.completed" : "ragtune.eval.gate.passed";
      const m = await bus.jsm.streams.getMessage("RAGTUNE", { last_by_subj: subject });
      into.push(fromBinary(schema as typeof EvalRunCompletedSchema, m!.data));
    }
    expect(completed[0]).toMatchObject({ evalRunId: run.id, status: EvalRunStatus.SUCCEEDED, collection: "docs", adapters: ["qa-adapter"] });
    expect(gatePassed[0]).toMatchObject({ evalRunId: run.id, baseModel: "base" });
  });

  it("records per-item request failures (5xx, 4xx, timeout) and completes with the counts; chat format sends the user turn", async () => {
    const client = service.client(EvalService);
    const { run: created } = await client.createEvalRun(
      request({
        source: { case: "evalFile", value: { name: "ops.jsonl", jsonl: EVAL_FILE } },
        baseModel: "base",
        adapters: ["flaky"],
        promptFormat: EvalPromptFormat.CHAT,
        sampling: { maxTokens: 50 },
        concurrency: 8,
      }),
    );
    const { run, events } = await finished(service, created!.id);
    expect(run.status, run.failure?.message).toBe(EvalRunStatus.SUCCEEDED);
    const flaky = run.report!.models.find((m) => m.model === "flaky")!;
    // "How long are backups kept?" → 500, "Which port…" → 400, "How fast is a restore?" → no answer within LLM_TIMEOUT.
    expect(flaky.failed).toBe(3);
    expect(flaky.failuresByKind).toEqual({ server_error: 1, bad_request: 1, timeout: 1 });
    expect(run.answersFailed).toBe(3);
    expect(flaky.successRate).toBeCloseTo(0.7, 10);
    const warnings = events.flatMap((e) => (e.event.case === "warning" ? [e.event.value.message] : []));
    expect(warnings).toHaveLength(3);
    expect(warnings.join("\n")).toMatch(/server_error: .*CUDA out of memory/);
    const chat = endpoint.requests.filter((r) => r.path === "/v1/chat/completions" && r.body["model"] === "flaky").at(-1)!.body;
    expect(chat["max_tokens"]).toBe(50);
    expect((chat["messages"] as { role: string; content: string }[])[0]!.content).toMatch(/^Guide > \w+\n\n[\s\S]+\n\nQuestion: /);
    const results = await client.listEvalItemResults({ evalRunId: run.id, page: { pageSize: 100 } });
    const port = results.results.find((r) => r.itemId === "port")!.answers.find((x) => x.model === "flaky")!;
    expect(port.error).toMatch(/^bad_request: .*400.*prompt too long/);
  });

  it("fails fast when the endpoint is down or does not serve a model, saying what to fix", async () => {
    const client = service.client(EvalService);
    const down = `http://127.0.0.1:${await freePort()}/v1`;
    const { run: a } = await client.createEvalRun(request({ source: { case: "evalFile", value: { name: "f", jsonl: EVAL_FILE } }, endpointUrl: down, baseModel: "base" }));
    const failedDown = (await finished(service, a!.id)).run;
    expect(failedDown.status).toBe(EvalRunStatus.FAILED);
    expect(failedDown.failure).toMatchObject({ reason: "ENDPOINT_UNREACHABLE", field: "endpoint_url" });
    expect(failedDown.failure!.message).toContain(down);

    const { run: b } = await client.createEvalRun(request({ source: { case: "evalFile", value: { name: "f", jsonl: EVAL_FILE } }, baseModel: "base", adapters: ["no-such-adapter"] }));
    const unknown = (await finished(service, b!.id)).run;
    expect(unknown.status).toBe(EvalRunStatus.FAILED);
    expect(unknown.failure).toMatchObject({ reason: "UNKNOWN_MODEL", field: "adapters" });
    expect(unknown.failure!.message).toMatch(/does not serve the model "no-such-adapter"; it serves: base, qa-adapter, judge, flaky/);
    expect(endpoint.requests.some((r) => r.body["model"] === "no-such-adapter")).toBe(false);

    // Without a base model named, the endpoint must list exactly one.
    const { run: c } = await client.createEvalRun(request({ source: { case: "evalFile", value: { name: "f", jsonl: EVAL_FILE } }, adapters: ["qa-adapter"] }));
    const noBase = (await finished(service, c!.id)).run;
    expect(noBase.failure).toMatchObject({ reason: "BASE_MODEL_REQUIRED" });
    expect(noBase.failure!.message).toContain("several base models (base, judge, flaky)");
  });

  it("refuses bad requests with the field and what to do", async () => {
    const client = service.client(EvalService);
    const file = (text: string) => ({ case: "evalFile" as const, value: { name: "f", jsonl: new TextEncoder().encode(text) } });
    await expectCode(client.createEvalRun(request({})), Code.InvalidArgument, /source: set dataset_version_id .* or eval_file/);
    await expectCode(client.createEvalRun(request({ source: file("") })), Code.InvalidArgument, /eval file is empty/);
    await expectCode(client.createEvalRun(request({ source: file(`${JSON.stringify(ITEMS[0])}\n{not json`) })), Code.InvalidArgument, /eval_file line 2 is not JSON/);
    await expectCode(client.createEvalRun(request({ source: file(JSON.stringify({ ...ITEMS[0], answerable: "yes" })) })), Code.InvalidArgument, /eval_file line 1: answerable: /);
    await expectCode(client.createEvalRun(request({ source: file(new Array(2).fill(JSON.stringify(ITEMS[0])).join("\n")) })), Code.InvalidArgument, /line 2: id "backup-keep" appears twice/);
    await expectCode(client.createEvalRun(request({ source: { case: "evalFile", value: { name: "f", jsonl: new Uint8Array([0xff, 0xfe, 0x00]) } } })), Code.InvalidArgument, /not UTF-8/);
    const ok = { source: { case: "evalFile" as const, value: { name: "f", jsonl: EVAL_FILE } } };
    await expectCode(client.createEvalRun(request({ ...ok, endpointUrl: "ftp://x/v1" })), Code.InvalidArgument, /endpoint_url: must be an http\(s\) URL/);
    await expectCode(client.createEvalRun(request({ ...ok, concurrency: 0 })), Code.InvalidArgument, /concurrency: must be between 1 and 256/);
    await expectCode(client.createEvalRun(request({ ...ok, sampling: { temperature: 5 } })), Code.InvalidArgument, /sampling.temperature/);
    await expectCode(client.createEvalRun(request({ ...ok, baseModel: "base", adapters: ["a", "a"] })), Code.InvalidArgument, /adapters: "a" is named twice/);
    await expectCode(client.createEvalRun(request({ source: { case: "datasetVersionId", value: "dsv-1" } })), Code.FailedPrecondition, /EVAL_DATASET_URL/);
    await expectCode(client.getEvalRun({ evalRunId: "eval-nope" }), Code.NotFound, /eval-nope/);
    await expectCode(client.getEvalReport({ evalRunId: "" }), Code.InvalidArgument, /eval_run_id/);
  });

  it("compares two runs item by item and cancels a running run", async () => {
    const client = service.client(EvalService);
    const ok = { source: { case: "evalFile" as const, value: { name: "f", jsonl: EVAL_FILE } }, baseModel: "base", adapters: ["qa-adapter"] };
    const first = (await finished(service, (await client.createEvalRun(request(ok))).run!.id)).run;
    const second = (await finished(service, (await client.createEvalRun(request({ ...ok, maxItems: 5, seed: 3 }))).run!.id)).run;
    expect(second.items).toBe(5);
    const compared = await client.compareEvalRuns({ baselineRunId: first.id, otherRunId: second.id });
    expect(compared.sharedItems).toBe(5);
    // Same models, same answers at temperature 0: no difference.
    expect(compared.differences.filter((d) => d.metric === "success_rate").map((d) => [d.model, d.delta])).toEqual([
      ["base", 0],
      ["qa-adapter", 0],
    ]);

    // A run whose answers never come: cancel it while it runs.
    const slow = await startLoopbackEndpoint({ base: () => ({ hang: true }) });
    try {
      const { run } = await client.createEvalRun(request({ source: ok.source, endpointUrl: slow.url, baseModel: "base" }));
      const watch = client.watchEvalRun({ evalRunId: run!.id })[Symbol.asyncIterator]();
      for (;;) {
        const e = (await watch.next()).value!.event!;
        if (e.event.case === "progress") break; // answering has started
      }
      const { run: cancelled } = await client.cancelEvalRun({ evalRunId: run!.id });
      expect(cancelled!.status).toBe(EvalRunStatus.CANCELLED);
      // The watch ends after the cancel.
      const rest: EvalRunEvent[] = [];
      for (let r = await watch.next(); r.done !== true; r = await watch.next()) rest.push(r.value.event!);
      expect(rest.at(-1)!.event).toMatchObject({ case: "statusChanged", value: { status: EvalRunStatus.CANCELLED } });
      await expectCode(client.cancelEvalRun({ evalRunId: run!.id }), Code.FailedPrecondition, /already finished \(cancelled\)/);
      await expectCode(client.getEvalReport({ evalRunId: run!.id }), Code.FailedPrecondition, /has succeeded/);
    } finally {
      await slow.close();
    }
  });

  it("finishes a run whose replica stopped mid-run on another replica once the lease lapses", async () => {
    let pause!: () => void;
    const paused = new Promise<void>((resolve) => (pause = resolve));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    // Replica A stops after its third answer (a paused step), without releasing its claim.
    const a = await startEval({ EVAL_BUCKET_PREFIX: "takeover" }, {
      onAnswer: async (_id, done) => {
        if (done === 3) {
          pause();
          await gate;
        }
      },
    });
    const { run } = await a.client(EvalService).createEvalRun(request({ source: { case: "evalFile", value: { name: "f", jsonl: EVAL_FILE } }, baseModel: "base", adapters: ["qa-adapter"], concurrency: 1 }));
    await paused;
    const stopping = a.stop();
    release();
    await stopping;
    const b = await startEval({ EVAL_BUCKET_PREFIX: "takeover" });
    try {
      const { run: done, events } = await finished(b, run!.id);
      expect(done.status, done.failure?.message).toBe(EvalRunStatus.SUCCEEDED);
      expect(done.answersDone).toBe(20);
      const warnings = events.flatMap((e) => (e.event.case === "warning" ? [e.event.value.message] : []));
      expect(warnings).toEqual([expect.stringMatching(/^run restarted from the first item: taken over by .*: the lease of .* lapsed/)]);
    } finally {
      await b.stop();
    }
  });
});
