import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadTokenizer } from "@ragtune/text";
import { describe, expect, it } from "vitest";
import { ingestChunks, SAMPLE_DOCS } from "../test/sample-chunks.js";
import { buildDataset, exportSplit, type DatasetBuildSettings } from "./dataset-builder.js";
import { DEFAULT_REFUSAL } from "./negatives.js";

const chunks = ingestChunks(SAMPLE_DOCS, readdirSync(SAMPLE_DOCS).sort().map((f) => join(SAMPLE_DOCS, f)), 512);
const tokenizer = loadTokenizer("mistral");
const settings: DatasetBuildSettings = { generation: {}, negatives: {}, quality: {}, splits: {} };

describe("buildDataset on the sample docs (offline: extractive questions, negatives, gate, splits)", () => {
  const build = buildDataset(chunks, settings, { tokenizer });
  const all = [...build.splits.train, ...build.splits.val, ...build.splits.test];

  it("builds answerable and unanswerable examples from most chunks and accounts for every one", () => {
    expect(build.counts.chunksWithExamples / build.counts.chunks).toBeGreaterThan(0.6);
    expect(build.counts.negatives).toBeGreaterThan(0);
    const dropped = build.dropped.gate.length + build.dropped.split.length;
    expect(build.counts.kept + dropped).toBe(build.counts.generated + build.counts.negatives);
    expect(Object.values(build.counts.droppedByReason).reduce((a, b) => a + b, 0)).toBe(dropped);
    expect(all.some((e) => !e.answerable)).toBe(true);
    for (const e of all.filter((x) => !x.answerable)) {
      expect(e.answer).toBe(DEFAULT_REFUSAL);
      expect(e.kind).toBe("unanswerable");
    }
    for (const e of all.filter((x) => x.answerable)) expect(e.context).toContain(e.answer);
  });

  it("splits by chunk: no chunk feeds two splits, and every split has examples", () => {
    const splitOf = new Map<string, string>();
    for (const name of ["train", "val", "test"] as const) {
      expect(build.splits[name].length).toBeGreaterThan(0);
      for (const e of build.splits[name]) {
        expect(splitOf.get(e.chunkId) ?? name).toBe(name);
        splitOf.set(e.chunkId, name);
      }
    }
  });

  it("is deterministic: the same chunks in another order build the same version", () => {
    const again = buildDataset([...chunks].reverse(), settings, { tokenizer });
    expect(again.contentHash).toBe(build.contentHash);
    expect(again.splits.train.map((e) => e.id)).toEqual(build.splits.train.map((e) => e.id));
    expect(again.splits.test.map((e) => e.id)).toEqual(build.splits.test.map((e) => e.id));
    const otherSeed = buildDataset(chunks, { ...settings, splits: { seed: 7 } }, { tokenizer });
    expect(otherSeed.contentHash).not.toBe(build.contentHash);
  });

  it("exports a train split the trainer worker's own loader accepts", async () => {
    const dir = await mkdtemp(join(tmpdir(), "dataset-build-"));
    try {
      const file = join(dir, "train.jsonl");
      const jsonl = exportSplit(build, "train", "mistral-instruct");
      await writeFile(file, jsonl);
      const rows = jsonl.trimEnd().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(rows.length).toBe(build.splits.train.length);
      const workerDir = join(SAMPLE_DOCS, "..", "..", "services", "trainer", "worker");
      // The worker's loader with the tiny model's Mistral tokenizer and the gate's default budget (1024 tokens).
      const check = [
        "import sys",
        "from pathlib import Path",
        "from ragtune_worker.data import load_examples, load_tokenizer",
        "from ragtune_worker.tiny_model import find_tokenizer_dir, write_tokenizer",
        "model_dir = Path(sys.argv[2])",
        "model_dir.mkdir()",
        "write_tokenizer(find_tokenizer_dir(), model_dir)",
        "print(len(load_examples(Path(sys.argv[1]), load_tokenizer(model_dir, 32000), 1024)))",
      ].join("\n");
      const out = spawnSync(join(workerDir, ".venv", "bin", "python"), ["-c", check, file, join(dir, "model")], {
        cwd: workerDir,
        env: { ...process.env, PYTHONPATH: workerDir },
        encoding: "utf8",
      });
      expect(out.stderr).toBe("");
      expect(Number(out.stdout.trim())).toBe(rows.length);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    // A Python interpreter importing transformers and loading the tokenizer: seconds of CPU on a quiet machine, and a
    // shared 2-core machine may run several suites at once.
  }, 120_000);
});
