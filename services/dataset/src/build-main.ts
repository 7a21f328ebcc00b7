/**
 * The build of a dataset version in a process of its own (see build-process.ts): reads a BuildInput as JSON on
 * stdin, writes a BuildOutput as JSON on stdout. CPU-heavy work (generation, MinHash, token counts) never runs on a
 * service's event loop.
 */
import { loadTokenizer } from "@ragtune/text";
import { STORED_FORMATS, type BuildInput, type BuildOutput } from "./build-process.js";
import { buildDataset, exportSplit } from "./dataset-builder.js";
import { mistralRowTokens } from "./exports.js";
import { SPLITS } from "./splits.js";

async function readStdin(): Promise<string> {
  const parts: Buffer[] = [];
  for await (const part of process.stdin) parts.push(part as Buffer);
  return Buffer.concat(parts).toString("utf8");
}

const input = JSON.parse(await readStdin()) as BuildInput;
const tokenizer = loadTokenizer(input.tokenizer);
const build = buildDataset(input.chunks, input.settings, { tokenizer }, input.examples, input.extractiveChunkIds);
const output: BuildOutput = {
  contentHash: build.contentHash,
  counts: build.counts,
  generated: build.generated,
  dropped: [...build.dropped.gate, ...build.dropped.split, ...build.dropped.served].map((d) => ({ example: d.example, reason: d.reason, detail: d.detail })),
  splits: Object.fromEntries(
    SPLITS.map((split) => [
      split,
      {
        examples: build.splits[split],
        exports: Object.fromEntries(STORED_FORMATS.map((format) => [format, exportSplit(build, split, format)])) as BuildOutput["splits"][typeof split]["exports"],
        tokens: build.splits[split].map((e) => mistralRowTokens(e, tokenizer)),
      },
    ]),
  ) as BuildOutput["splits"],
};
process.stdout.write(JSON.stringify(output));
