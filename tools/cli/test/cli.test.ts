import { spawn } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { tempDir } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startGatewayTestbed, type GatewayTestbed } from "../../../services/gateway/test/testbed.js";
import { run } from "../src/cli.js";

let tb: GatewayTestbed;
let key: string;
let env: Record<string, string>;

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await run(argv, env, { out: (t) => (out += t), err: (t) => (err += `${t}\n`) });
  return { code, out, err };
}

/** The lifecycle rules sentence for every question (a grounded answer). */
const answer = () => " Lifecycle rules expire objects after 30 days.";

beforeAll(async () => {
  tb = await startGatewayTestbed(answer, { GATEWAY_AUTH: "api-keys" });
  await tb.ingestDocuments("docs", { "storage.md": "# Storage\n\n## Lifecycle rules\n\nLifecycle rules expire objects after 30 days.\n" });
  env = { NATS_URL: tb.nats.url, RAGTUNE_URL: tb.gateway.url, RAGTUNE_CONFIG: "/nonexistent/ragtune.json" };
  const created = await cli("keys", "create", "--tenant", "acme");
  expect(created.code).toBe(0);
  key = created.out.trim();
  expect((await cli("keys", "grant", "--tenant", "acme", "--collection", "docs")).code).toBe(0);
  env.RAGTUNE_API_KEY = key;
}, 120_000);

afterAll(async () => {
  await tb?.close();
});

describe("ragtune", () => {
  it("asks and prints the answer with its citations", async () => {
    const r = await cli("ask", "--collection", "docs", "When", "do", "lifecycle", "rules", "expire?");
    expect(r.code).toBe(0);
    expect(r.out).toMatch(
      /^Lifecycle rules expire objects after 30 days\.\n\n\[1\] Storage › Storage › Lifecycle rules \(chunk \S+, support 1\.00\)\nretrieved context:\n  \[1\] Storage › Lifecycle rules \(score \d+\.\d\d\)\nmodel: base-model/,
    );
  });

  it("streams with --stream and prints JSON with --json", async () => {
    const streamed = await cli("ask", "--collection", "docs", "--stream", "lifecycle rules");
    expect(streamed.out).toContain("Lifecycle rules expire objects after 30 days.");
    const json = JSON.parse((await cli("ask", "--collection", "docs", "--json", "lifecycle rules")).out) as { answer: string; citations: unknown[] };
    expect(json.answer).toBe("Lifecycle rules expire objects after 30 days.");
    expect(json.citations).toHaveLength(1);
  });

  it("lists collections and documents as tables", async () => {
    const collections = await cli("collections");
    expect(collections.out).toMatch(/^COLLECTION\s+DOCUMENTS\s+CHUNKS\s+UPDATED\ndocs\s+1\s+1\s+\S+/);
    expect((await cli("documents", "--collection", "docs")).out).toMatch(/storage\.md\s+storage|storage\.md/);
    expect((await cli("promotions", "--collection", "docs")).out).toMatch(/\(none\)/);
  });

  it("takes the URL and key from a config file", async () => {
    const dir = await tempDir("ragtune-cli");
    await writeFile(join(dir, "config.json"), JSON.stringify({ url: tb.gateway.url, key }));
    const saved = env;
    env = { RAGTUNE_CONFIG: join(dir, "config.json") };
    try {
      expect((await cli("collections", "--json")).code).toBe(0);
    } finally {
      env = saved;
    }
  });

  it("exits with codes scripts can rely on", async () => {
    expect((await cli()).code).toBe(2);
    expect((await cli("frobnicate")).code).toBe(2);
    expect((await cli("ask", "--top-k", "x", "q")).code).toBe(2);
    const noKey = await cli("collections", "--key", "rt_0000000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    expect(noKey.code).toBe(3);
    expect(noKey.err).toMatch(/Unauthenticated: the API key is not valid/);
    expect((await cli("ask", "--collection", "theirs", "q")).code).toBe(3);
    expect((await cli("rollback", "--collection", "docs")).code).toBe(5);
    expect((await cli("collections", "--url", "http://127.0.0.1:1")).code).toBe(7);
  });

  it("ingests a folder as a pipeline run, following it with progress, and shows the run", async () => {
    const dir = await tempDir("ragtune-cli-docs");
    await mkdir(join(dir, "guide"));
    await writeFile(join(dir, "guide", "backup.md"), "# Backup\n\n## Snapshots\n\nSnapshots are taken every night at 02:00.\n");
    await writeFile(join(dir, "notes.txt"), "not a document");
    const r = await cli("ingest", "--collection", "docs", dir);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/pipeline run (pipe-\S+): ingest on collection docs/);
    expect(r.out).toMatch(/: succeeded\nSTAGE\s+STATUS\s+RESOURCE\s+DETAIL\ningest\s+succeeded\s+\S+\s+1 documents/);
    expect(r.out).toMatch(/dataset\s+skipped\s+not one of this run's stages/);
    expect((await cli("documents", "--collection", "docs")).out).toContain("guide/backup.md");
    const id = /pipeline run (pipe-[0-9a-f]+)/.exec(r.err)![1]!;
    const listed = await cli("pipeline", "list", "--collection", "docs");
    expect(listed.out).toMatch(new RegExp(`${id}\\s+docs\\s+succeeded`));
    const got = JSON.parse((await cli("pipeline", "get", id, "--json")).out) as { status: string; stages: { stage: string; status: string }[] };
    expect(got.status).toBe("PIPELINE_RUN_STATUS_SUCCEEDED");
    expect((await cli("pipeline", "watch", id)).code).toBe(0);
    const cancel = await cli("pipeline", "cancel", id);
    expect(cancel.code).toBe(5);
    expect(cancel.err).toMatch(/already finished/);
  });

  it("starts a run without following it with --detach, and refuses incomplete commands with usage errors", async () => {
    const dir = await tempDir("ragtune-cli-one");
    await writeFile(join(dir, "faq.md"), "# FAQ\n\n## Quotas\n\nEach account may hold 100 buckets.\n");
    const detached = await cli("ingest", "--collection", "docs", "--detach", join(dir, "faq.md"));
    expect(detached.code).toBe(0);
    const id = detached.out.trim();
    expect(id).toMatch(/^pipe-/);
    expect((await cli("pipeline", "watch", id)).code).toBe(0);
    expect((await cli("train")).code).toBe(2);
    const badHp = await cli("train", "--dataset-version", "v", "--hp", "no_such_field=1");
    expect(badHp.code).toBe(2);
    expect(badHp.err).toMatch(/--hp: .*no_such_field/);
    expect((await cli("train", "--dataset-version", "v", "--hp", "learning_rate")).err).toMatch(/--hp takes name=value/);
    expect((await cli("eval")).code).toBe(2);
    expect((await cli("dataset")).code).toBe(2);
    expect((await cli("ingest", join(dir, "missing"))).err).toMatch(/does not exist/);
    const noDocs = await cli("ingest", "--collection", "docs", await tempDir("ragtune-cli-empty"));
    expect(noDocs.code).toBe(2);
    expect(noDocs.err).toMatch(/no Markdown or HTML documents/);
    // The gateway refuses a run another tenant's collection would get.
    expect((await cli("ingest", "--collection", "theirs", join(dir, "faq.md"))).code).toBe(0); // unowned: now acme's
    expect((await cli("pipeline", "get", "pipe-unknown")).code).toBe(4);
  });

  it("sets a collection to follow its documents and back", async () => {
    const on = await cli("follow", "--collection", "docs", "--settle-seconds", "120", "--steps", "10", "--retrain-from", "promoted", "--json");
    expect(on.code, on.err).toBe(0);
    const policy = (JSON.parse(on.out) as { policy: { followDocuments: boolean; settleSeconds: number; spec: { hyperparameters: { maxSteps: number } } } }).policy;
    expect(policy).toMatchObject({ followDocuments: true, settleSeconds: 120, retrainFrom: "RETRAIN_FROM_PROMOTED_ADAPTER", spec: { hyperparameters: { maxSteps: 10 } } });
    expect((await cli("follow", "--collection", "docs", "--retrain-from", "yesterday")).code).toBe(2);
    expect((await cli("follow", "--collection", "docs", "--from-adapter", "job-x")).code).toBe(2);
    expect((await cli("follow", "--collection", "docs", "--off")).out).toMatch(/no longer follows/);
    expect((await cli("follow", "--collection", "nobodys")).code).toBe(3);
  });

  it("runs as the `ragtune` binary", async () => {
    const child = spawn(process.execPath, [join(import.meta.dirname, "..", "bin", "ragtune.mjs"), "ask", "--collection", "docs", "--json", "lifecycle"], { env: { ...process.env, ...env } });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    expect(code).toBe(0);
    expect((JSON.parse(out) as { answer: string }).answer).toBe("Lifecycle rules expire objects after 30 days.");
  }, 60_000);
});
