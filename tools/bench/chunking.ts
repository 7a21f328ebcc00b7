/**
 * Chunking and ingest benchmark on ../shared/corpus/aws-docs (issues 12 and 16): size 512, overlap 0.
 *
 * Part 1, raw Markdown (the headline): every contestant gets each file as written.
 *   floor     one encode pass over every file with Hugging Face's Rust tokenizer (npm `tokenizers`)
 *   anchor A  @langchain/textsplitters markdown splitter, length = pure-JS @huggingface/tokenizers count
 *   anchor B  the same splitter, length = the Rust tokenizer's count
 *   ragtune   @ragtune/text parse + chunk
 * Part 2, like for like: every contestant gets the same normalized text (ragtune's parsed text of each file) and
 *   does the same job, chunks of at most 512 tokens; ragtune chunks the parsed documents (the same text).
 * In both, tokens/s counts each contestant's own output (the reference's tokens of its chunks; for the floor, of its
 * input), every chunk is counted with the Rust reference (over budget, exact counts), the chunks are checked to
 * tile the text each contestant was given (in order, nothing lost but whitespace), and the fill of the chunks is
 * reported (share under a quarter of the budget, median, share in the top quarter).
 * Part 3, one 300,000-character word (a base64 blob): the reference's encode against ragtune's count, and against
 *   ragtune's parse + chunk of a Markdown file holding it; counts checked against the reference.
 * Part 4, the ingest service (child process on a real nats-server, as the dev stack starts it): documents/s from the
 *   request to the completed run over COPIES copies of the corpus with 1 and N workers, against parse + chunk of
 *   the same files in one thread here (the anchor); then ListChunks by collection at LIST_SIZES chunks: the first
 *   page of 10, and a full scan in pages of 1000 (as the dataset service reads a collection), and ListDocuments' first
 *   page of 10. Every figure of part 4 is printed with the load average at the time (a shared machine) and with the
 *   CPU seconds of the service's threads and nats-server, which are less at the mercy of the other load than wall time.
 * Part 5, chunk fill: on the AWS corpus and on the shipped sample docs (tools/sample-docs), the token distribution of
 *   the chunks against the budget (share under a quarter, share at least half full, median) for ragtune without and
 *   with packing of small sibling sections, and LangChain's markdown splitter (Rust tokenizer length) on the same
 *   normalized text and on the files as written. Counts by the Rust reference; each contestant's chunks checked to
 *   tile its input, ragtune's counts checked exact and within budget. Deterministic: one run.
 * Each figure of parts 1–3: min and median of RUNS runs after a warm-up, contestants round-robin, a fresh tokenizer
 * instance per run (its load is timed).
 *
 * Run: npm run bench:chunking -w @ragtune/tools
 *   (RUNS=5 CORPUS=/path/to/aws-docs PARTS=1,2,3,4,5 COPIES=10 E2E_RUNS=3 LIST_SIZES=1000,10000,100000 or none to override;
 *   BIG_RUN=10000 adds one run of that many documents)
 */
import { cp, mkdir, mkdtemp, rm } from "node:fs/promises";
import { readdirSync, readFileSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Tokenizer as JsTokenizer } from "@huggingface/tokenizers";
import { RecursiveCharacterTextSplitter } from "@langchain/textsplitters";
import { chunkDocument, documentIdFor, loadTokenizer, parseDocument, tokenizerFile, type ParsedDocument, type TokenCounter } from "@ragtune/text";
import { DocumentStatus, IngestRunStatus, IngestService } from "@ragtune/proto";
import { createClient } from "@ragtune/rpc";
import { AWS_CORPUS_DIR, corpusMarkdownFiles, seededRandom } from "@ragtune/testing";
import { Tokenizer as RustTokenizer } from "tokenizers";
import { startStack } from "../src/stack.js";
import { threadCpuSeconds } from "./proc-cpu.js";

const CHUNK_SIZE = 512;
const RUNS = Number(process.env["RUNS"] ?? 5);
const CORPUS = resolve(process.env["CORPUS"] ?? AWS_CORPUS_DIR);
const TOKENIZER_JSON = tokenizerFile("mistral");
const PARTS = new Set((process.env["PARTS"] ?? "1,2,3,4,5").split(",").map((p) => p.trim()));
const COPIES = Number(process.env["COPIES"] ?? 10);
const E2E_RUNS = Number(process.env["E2E_RUNS"] ?? 3);
const LIST_SIZES = (process.env["LIST_SIZES"] ?? "1000,10000,100000").split(",").map(Number).filter((n) => n > 0);
/** Documents of the one big run of part 4 (copies of the corpus; 0 skips it). */
const BIG_RUN = Number(process.env["BIG_RUN"] ?? 0);

/** The load average now (1, 5, 15 minutes), as `uptime` prints it: every figure of part 4 is printed with it. */
const load = (): string => loadavg().map((l) => l.toFixed(2)).join(", ");


const files = corpusMarkdownFiles(CORPUS);
const names = files.map((f) => relative(CORPUS, f));
const texts = files.map((f) => readFileSync(f, "utf8"));
const parsed: ParsedDocument[] = files.map((f, i) => parseDocument({ text: texts[i]!, filename: names[i]! }));
/** The normalized text of each file: what every contestant of part 2 gets. */
const normalized = parsed.map((d) => d.text);
const reference = RustTokenizer.fromFile(TOKENIZER_JSON);
const rustCount = async (tok: RustTokenizer, text: string): Promise<number> =>
  (await tok.encode(text, null, { addSpecialTokens: false })).getIds().length;
const tokensOf = async (inputs: string[]): Promise<number> => {
  let n = 0;
  for (const t of inputs) n += await rustCount(reference, t);
  return n;
};
const chars = (inputs: string[]): number => inputs.reduce((n, t) => n + t.length, 0);

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const fmt = (n: number): string => Math.round(n).toLocaleString("en-US");
const out = (line = ""): void => void process.stdout.write(`${line}\n`);

/** A contestant's output: per document, its chunks (and their recorded token counts), and the text it was given. */
interface Result {
  /** chunks[d]: the chunks of document d, in order; [] for the floor. */
  chunks: string[][];
  recorded?: number[][];
  /** given[d]: the text document d's chunks must tile (undefined for the floor). */
  given?: string[];
  /**
   * headings[d]: lines of document d that may stand outside every chunk — ragtune's headings with no text of their
   * own, which live on in the heading path of the sections below them.
   */
  headings?: Set<string>[];
}
interface Contestant {
  name: string;
  /** The floor: no chunks; its tokens/s counts its input. */
  floorInput?: string[];
  run: () => Promise<Result>;
}

const tokenizerJson = (): { json: object; config: object } => ({
  json: JSON.parse(readFileSync(TOKENIZER_JSON, "utf8")) as object,
  config: JSON.parse(readFileSync(TOKENIZER_JSON.replace(/tokenizer\.json$/, "tokenizer_config.json"), "utf8")) as object,
});

const langchain = async (inputs: string[], length: ((text: string) => number) | ((text: string) => Promise<number>)): Promise<Result> => {
  const splitter = RecursiveCharacterTextSplitter.fromLanguage("markdown", { chunkSize: CHUNK_SIZE, chunkOverlap: 0, lengthFunction: length });
  const chunks: string[][] = [];
  for (const text of inputs) chunks.push(await splitter.splitText(text));
  return { chunks, given: inputs };
};

const floor = (inputs: string[]): Contestant => ({
  name: "floor: one Rust `tokenizers` encode pass",
  floorInput: inputs,
  run: async () => {
    const tok = RustTokenizer.fromFile(TOKENIZER_JSON);
    for (const text of inputs) await rustCount(tok, text);
    return { chunks: [] };
  },
});
const anchorA = (inputs: string[]): Contestant => ({
  name: "anchor A: LangChain `RecursiveCharacterTextSplitter.fromLanguage(\"markdown\")` + @huggingface/tokenizers (JS)",
  run: async () => {
    const { json, config } = tokenizerJson();
    const tok = new JsTokenizer(json, config);
    return langchain(inputs, (text) => tok.encode(text, { add_special_tokens: false }).ids.length);
  },
});
const anchorB = (inputs: string[]): Contestant => ({
  name: "anchor B: the same splitter + Rust `tokenizers`",
  run: async () => {
    const tok = RustTokenizer.fromFile(TOKENIZER_JSON);
    return langchain(inputs, (text) => rustCount(tok, text));
  },
});
const ragtune = (name: string, docs: () => ParsedDocument[]): Contestant => ({
  name,
  run: async () => {
    const tokenizer = loadTokenizer("mistral");
    const input = docs();
    const chunked = input.map((doc) => chunkDocument(doc, { tokenizer, documentId: documentIdFor("bench", doc.filename) }));
    return {
      chunks: chunked.map((cs) => cs.map((c) => c.text)),
      recorded: chunked.map((cs) => cs.map((c) => c.tokenCount)),
      given: input.map((d) => d.text),
      headings: input.map((d) => new Set(d.sections.map((x) => d.text.slice(x.charStart, x.charEnd)).filter((t) => !t.includes("\n")))),
    };
  },
});

/**
 * Whether the chunks tile `text` in order: each found after the previous one with nothing between but whitespace
 * (and lines of `headings`, headings kept as a heading path instead of as text).
 */
function tiles(text: string, chunks: string[], headings: Set<string> = new Set()): boolean {
  const gapOk = (gap: string) => gap.split("\n").every((line) => line.trim() === "" || headings.has(line.trim()));
  let at = 0;
  for (const chunk of chunks) {
    const found = text.indexOf(chunk, at);
    if (found < 0 || !gapOk(text.slice(at, found))) return false;
    at = found + chunk.length;
  }
  return gapOk(text.slice(at));
}

async function table(title: string, contestants: Contestant[]): Promise<void> {
  // Warm-up, then runs interleaved round-robin so that load from other processes hits every contestant alike (the
  // ratios are the result; absolute times depend on the machine).
  const results = new Map<Contestant, Result>();
  const times = new Map<Contestant, number[]>(contestants.map((c) => [c, []]));
  for (const c of contestants) results.set(c, await c.run());
  for (let i = 0; i < RUNS; i++) {
    for (const c of contestants) {
      const start = performance.now();
      await c.run();
      times.get(c)!.push((performance.now() - start) / 1000);
    }
  }
  const floorMedian = median(times.get(contestants[0]!)!);
  out(title);
  out();
  out("| contestant | min s | median s | docs/s | tokens/s (own output) | × floor (median) | chunks | over budget | exact counts | tiles its input | < ¼ budget | median tokens | ≥ ¾ budget |");
  out("|---|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|---:|---:|---:|");
  let failed = false;
  for (const c of contestants) {
    const result = results.get(c)!;
    const runs = times.get(c)!;
    const med = median(runs);
    const flat = result.chunks.flat();
    const counts = (await reference.encodeBatch(flat, { addSpecialTokens: false })).map((e) => e.getIds().length);
    const ownTokens = c.floorInput !== undefined ? await tokensOf(c.floorInput) : counts.reduce((a, b) => a + b, 0);
    const over = counts.filter((n) => n > CHUNK_SIZE).length;
    const recorded = result.recorded?.flat();
    const exact = recorded === undefined ? "–" : counts.every((n, i) => n === recorded[i]) ? "yes" : "NO";
    const tiled = result.given === undefined ? "–" : result.chunks.every((cs, d) => tiles(result.given![d]!, cs, result.headings?.[d])) ? "yes" : "NO";
    if (exact === "NO" || tiled === "NO" || (c.floorInput === undefined && over > 0 && recorded !== undefined)) failed = true;
    const share = (pred: (n: number) => boolean) => (counts.length === 0 ? "–" : `${((100 * counts.filter(pred).length) / counts.length).toFixed(0)}%`);
    out(
      `| ${c.name} | ${Math.min(...runs).toFixed(3)} | ${med.toFixed(3)} | ${(files.length / med).toFixed(0)} | ${fmt(ownTokens / med)} | ${(med / floorMedian).toFixed(2)}× | ${flat.length || "–"} | ${flat.length ? over : "–"} | ${exact} | ${tiled} | ${share((n) => n < CHUNK_SIZE / 4)} | ${counts.length ? median(counts) : "–"} | ${share((n) => n >= (CHUNK_SIZE * 3) / 4)} |`,
    );
  }
  out();
  if (failed) throw new Error(`${title}: a ragtune contestant's output failed a check (see the table)`);
}

if (PARTS.has("1")) {
  await table(
    `Part 1 — raw Markdown: ${files.length} files, ${fmt(chars(texts))} characters, ${fmt(await tokensOf(texts))} Mistral tokens; chunk size ${CHUNK_SIZE}, overlap 0, ${RUNS} runs after a warm-up. ragtune's chunks tile the parsed text it chunks (link targets, front matter and markup are not text).`,
    [floor(texts), anchorA(texts), anchorB(texts), ragtune("ragtune parse + chunk (raw Markdown)", () => files.map((f, i) => parseDocument({ text: texts[i]!, filename: names[i]! })))],
  );
}

if (PARTS.has("2")) {
  await table(
    `Part 2 — like for like, the same normalized text for everyone: ${files.length} documents, ${fmt(chars(normalized))} characters, ${fmt(await tokensOf(normalized))} Mistral tokens.`,
    [floor(normalized), anchorA(normalized), anchorB(normalized), ragtune("ragtune chunker (the same text, parsed)", () => parsed)],
  );
}

if (PARTS.has("3")) {
  const random = seededRandom(16);
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const letters: string[] = [];
  for (let i = 0; i < 300_000; i++) letters.push(alphabet[Math.floor(random() * alphabet.length)]!);
  const word = letters.join("");
  const markdown = `# Inline image\n\n${word}\n`;
  const expected = await rustCount(reference, word);
  let chunked: { text: string; tokenCount: number }[] = [];
  // Each run gets fresh tokenizer instances (no memo carried over), loaded and used once on a short text before the
  // clock starts (lazy set-up is not the word's cost): the work alone.
  const fresh = async () => {
    const tok = RustTokenizer.fromFile(TOKENIZER_JSON);
    await rustCount(tok, "warm up");
    return tok;
  };
  const ours = () => {
    const tok = loadTokenizer("mistral");
    tok.count("warm up");
    return tok;
  };
  const contestants: { name: string; prepare: () => unknown; run: (tok: never) => Promise<number> }[] = [
    {
      name: "reference: Rust `tokenizers` encode of the word (anchor)",
      prepare: fresh,
      run: async (tok: RustTokenizer) => rustCount(tok, word),
    },
    { name: "ragtune count of the word", prepare: ours, run: async (tok: TokenCounter) => tok.count(word) },
    {
      name: "ragtune parse + chunk of a Markdown file holding it",
      prepare: ours,
      run: async (tok: TokenCounter) => {
        const doc = parseDocument({ text: markdown, filename: "blob.md" });
        chunked = chunkDocument(doc, { tokenizer: tok, documentId: "blob" });
        return chunked.length;
      },
    },
  ] as never;
  const times = contestants.map(() => [] as number[]);
  const counts = contestants.map(() => 0);
  for (let i = 0; i <= RUNS; i++) {
    for (const [k, c] of contestants.entries()) {
      const tok = (await c.prepare()) as never;
      const start = performance.now();
      counts[k] = await c.run(tok);
      if (i > 0) times[k]!.push((performance.now() - start) / 1000);
    }
  }
  const chunkCounts = (await reference.encodeBatch(chunked.map((c) => c.text), { addSpecialTokens: false })).map((e) => e.getIds().length);
  const exactChunks = chunkCounts.every((n, i) => n === chunked[i]!.tokenCount);
  const anchor = median(times[0]!);
  out(`Part 3 — one 300,000-character word (seeded base64), ${fmt(expected)} Mistral tokens; ${RUNS} runs after a warm-up, a fresh tokenizer per run, loaded and used once on a short text before the clock starts.`);
  out();
  out("| contestant | min s | median s | × reference (median) | result | checked |");
  out("|---|---:|---:|---:|---:|:---:|");
  out(`| ${contestants[0]!.name} | ${Math.min(...times[0]!).toFixed(3)} | ${anchor.toFixed(3)} | 1.00× | ${fmt(counts[0]!)} tokens | – |`);
  out(`| ${contestants[1]!.name} | ${Math.min(...times[1]!).toFixed(3)} | ${median(times[1]!).toFixed(3)} | ${(median(times[1]!) / anchor).toFixed(2)}× | ${fmt(counts[1]!)} tokens | ${counts[1] === expected ? "equal" : "DIFFERENT"} |`);
  out(`| ${contestants[2]!.name} | ${Math.min(...times[2]!).toFixed(3)} | ${median(times[2]!).toFixed(3)} | ${(median(times[2]!) / anchor).toFixed(2)}× | ${counts[2]} chunks, max ${Math.max(...chunkCounts)} tokens | ${exactChunks && Math.max(...chunkCounts) <= CHUNK_SIZE ? "exact, in budget" : "FAILED"} |`);
  out();
  if (counts[1] !== expected || !exactChunks || Math.max(...chunkCounts) > CHUNK_SIZE) throw new Error("part 3: ragtune's counts differ from the reference's");
}

if (PARTS.has("5")) {
  const sampleDir = join(dirname(fileURLToPath(import.meta.url)), "..", "sample-docs");
  const sampleFiles = readdirSync(sampleDir)
    .filter((f) => /\.(md|html|txt)$/.test(f))
    .sort()
    .map((f) => join(sampleDir, f));
  const corpora = [
    { name: `the AWS corpus (${files.length} Markdown files)`, files, root: CORPUS },
    { name: `the sample docs (tools/sample-docs, ${sampleFiles.length} Markdown and HTML files)`, files: sampleFiles, root: sampleDir },
  ];
  const tok = loadTokenizer("mistral");
  const rust = RustTokenizer.fromFile(TOKENIZER_JSON);
  out(`Part 5 — chunk fill, chunk size ${CHUNK_SIZE}, overlap 0: how full the chunks are. Well filled: at least half the budget. Token counts by the Rust reference.`);
  out();
  let failed = false;
  for (const corpus of corpora) {
    const raw = corpus.files.map((f) => readFileSync(f, "utf8"));
    const docs = corpus.files.map((f, i) => parseDocument({ text: raw[i]!, filename: relative(corpus.root, f) }));
    const given = docs.map((d) => d.text);
    const headings = docs.map((d) => new Set(d.sections.map((x) => d.text.slice(x.charStart, x.charEnd)).filter((t) => !t.includes("\n"))));
    const ours = (packSections: boolean): Result => {
      const chunked = docs.map((doc) => chunkDocument(doc, { tokenizer: tok, packSections, documentId: documentIdFor("bench", doc.filename) }));
      return { chunks: chunked.map((cs) => cs.map((c) => c.text)), recorded: chunked.map((cs) => cs.map((c) => c.tokenCount)), given, headings };
    };
    const rows: [string, Result][] = [
      ["ragtune, sections never packed (`packSections: false`)", ours(false)],
      ["ragtune, small sibling sections packed (`packSections: true`, the default)", ours(true)],
      ["LangChain markdown splitter + Rust `tokenizers`, the same normalized text", await langchain(given, (text) => rustCount(rust, text))],
      ["LangChain markdown splitter + Rust `tokenizers`, the files as written", await langchain(raw, (text) => rustCount(rust, text))],
    ];
    out(`${corpus.name}:`);
    out();
    out("| contestant | chunks | < ¼ budget | ≥ ½ budget (well filled) | median tokens | median fill | mean tokens | over budget | exact counts | tiles its input |");
    out("|---|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|");
    for (const [name, result] of rows) {
      const flat = result.chunks.flat();
      const counts = (await reference.encodeBatch(flat, { addSpecialTokens: false })).map((e) => e.getIds().length);
      const recorded = result.recorded?.flat();
      const exact = recorded === undefined ? "–" : counts.every((n, i) => n === recorded[i]) ? "yes" : "NO";
      const tiled = result.chunks.every((cs, d) => tiles(result.given![d]!, cs, result.headings?.[d])) ? "yes" : "NO";
      const over = counts.filter((n) => n > CHUNK_SIZE).length;
      if (recorded !== undefined && (exact === "NO" || tiled === "NO" || over > 0)) failed = true;
      const share = (pred: (n: number) => boolean) => `${((100 * counts.filter(pred).length) / counts.length).toFixed(0)}%`;
      const med = median(counts);
      const mean = counts.reduce((a, b) => a + b, 0) / counts.length;
      out(`| ${name} | ${counts.length} | ${share((n) => n < CHUNK_SIZE / 4)} | ${share((n) => n >= CHUNK_SIZE / 2)} | ${med} | ${((100 * med) / CHUNK_SIZE).toFixed(0)}% | ${mean.toFixed(0)} | ${over} | ${exact} | ${tiled} |`);
    }
    out();
  }
  if (failed) throw new Error("part 5: a ragtune row failed a check (see the tables)");
}

if (PARTS.has("4")) {
  const root = await mkdtemp(join(tmpdir(), "ragtune-bench-ingest-"));
  try {
    for (let copy = 0; copy < COPIES; copy++) {
      await mkdir(join(root, `copy-${copy}`), { recursive: true });
      await cp(CORPUS, join(root, `copy-${copy}`), { recursive: true, filter: (src) => !src.endsWith("SOURCE.md") });
    }
    const copied = names.length * COPIES;
    const copiedChars = chars(texts) * COPIES;
    // The anchor: parse + chunk of the same files in one thread here (what a worker does for each document).
    const anchorTimes: number[] = [];
    const anchorCpu: number[] = [];
    for (let i = 0; i <= E2E_RUNS; i++) {
      const start = performance.now();
      const cpu = process.cpuUsage();
      const tokenizer = loadTokenizer("mistral");
      for (let copy = 0; copy < COPIES; copy++) {
        for (const [k, text] of texts.entries()) {
          const doc = parseDocument({ text, filename: `copy-${copy}/${names[k]}` });
          chunkDocument(doc, { tokenizer, documentId: documentIdFor("anchor", doc.filename) });
        }
      }
      if (i > 0) {
        anchorTimes.push((performance.now() - start) / 1000);
        const used = process.cpuUsage(cpu);
        anchorCpu.push((used.user + used.system) / 1e6);
      }
    }
    const anchor = median(anchorTimes);
    const anchorLoad = load();
    const cores = availableParallelism();
    out(`Part 4 — the ingest service (child process, real nats-server): ${fmt(copied)} Markdown files (${COPIES} copies of the corpus, ${fmt(copiedChars)} characters) as one server-directory run, from IngestDocuments to the completed event; median of ${E2E_RUNS} runs, each into a new collection, after a warm-up run of one copy. Anchor: parse + chunk of the same files in one thread of this process.`);
    out();
    out("CPU columns: CPU seconds per run (median) of the ingest process's main thread, its other threads (the document workers, GC, I/O) and nats-server; for the anchor, this process.");
    out();
    out("| configuration | median s | documents/s | × anchor (median) | CPU main | CPU other threads | CPU nats-server | CPU total × anchor | chunks | load average |");
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    const anchorCpuMedian = median(anchorCpu);
    out(`| anchor: parse + chunk, one thread, no storage | ${anchor.toFixed(2)} | ${fmt(copied / anchor)} | 1.00× | ${anchorCpuMedian.toFixed(2)} | – | – | 1.00× | – | ${anchorLoad} |`);
    for (const workers of [...new Set([1, cores])]) {
      const stack = await startStack({ only: ["ingest"], env: { INGEST_ALLOWED_ROOT: root, INGEST_WORKERS: String(workers), LOG_LEVEL: "warn" } });
      try {
        const client = createClient(IngestService, { baseUrl: stack.services.ingest.url, protocol: "grpc" });
        const runTimes: number[] = [];
        const cpu = { main: [] as number[], other: [] as number[], nats: [] as number[] };
        let chunks = 0;
        const servicePid = stack.services.ingest.process.pid!;
        const natsPid = stack.nats.pid!;
        // A warm-up run of one corpus copy in its own collection, not counted (the anchor has its warm-up run too):
        // the fresh process compiles its code, starts its worker threads and opens its buckets.
        const warmUp = await client.ingestDocuments({ collection: "e2e-warm-up", sources: [{ source: { case: "serverPath", value: { path: "copy-0" } } }] });
        for await (const _ of client.watchIngestRun({ runId: warmUp.run!.id })) void _;
        for (let i = 0; i < E2E_RUNS; i++) {
          const before = { service: threadCpuSeconds(servicePid), nats: threadCpuSeconds(natsPid) };
          const start = performance.now();
          const { run } = await client.ingestDocuments({ collection: `e2e-${i}`, sources: [{ source: { case: "serverPath", value: { path: "." } } }] });
          let status = IngestRunStatus.UNSPECIFIED;
          for await (const { event } of client.watchIngestRun({ runId: run!.id })) {
            if (event?.event.case === "completed") {
              status = event.event.value.status;
              chunks = event.event.value.statistics?.tokenStats?.count ?? 0;
            }
          }
          runTimes.push((performance.now() - start) / 1000);
          const after = { service: threadCpuSeconds(servicePid), nats: threadCpuSeconds(natsPid) };
          cpu.main.push(after.service.main - before.service.main);
          cpu.other.push(after.service.other - before.service.other);
          cpu.nats.push(after.nats.main + after.nats.other - before.nats.main - before.nats.other);
          if (status !== IngestRunStatus.SUCCEEDED) throw new Error(`part 4: the run ended ${IngestRunStatus[status]}`);
        }
        const t = median(runTimes);
        const [m, o, n] = [median(cpu.main), median(cpu.other), median(cpu.nats)];
        out(`| service, INGEST_WORKERS=${workers} | ${t.toFixed(2)} | ${fmt(copied / t)} | ${(t / anchor).toFixed(2)}× | ${m.toFixed(2)} | ${o.toFixed(2)} | ${n.toFixed(2)} | ${((m + o + n) / anchorCpuMedian).toFixed(2)}× | ${fmt(chunks)} | ${load()} |`);
      } finally {
        await stack.stop();
      }
    }
    out();

    // One run of BIG_RUN documents (copies of the corpus): its per-document lists are larger than a NATS message.
    if (BIG_RUN > 0) {
      const copies = Math.ceil(BIG_RUN / names.length);
      for (let copy = 0; copy < copies; copy++) {
        await cp(CORPUS, join(root, "big", `copy-${copy}`), { recursive: true, filter: (src) => !src.endsWith("SOURCE.md") });
      }
      const documents = copies * names.length;
      const stack = await startStack({
        only: ["ingest"],
        env: { INGEST_ALLOWED_ROOT: root, INGEST_WORKERS: String(cores), INGEST_MAX_BATCH_DOCUMENTS: String(Math.max(10_000, documents)), LOG_LEVEL: "warn" },
      });
      try {
        const client = createClient(IngestService, { baseUrl: stack.services.ingest.url, protocol: "grpc" });
        const start = performance.now();
        const { run } = await client.ingestDocuments({ collection: "big", sources: [{ source: { case: "serverPath", value: { path: "big" } } }] });
        let events = 0;
        for await (const _ of client.watchIngestRun({ runId: run!.id })) events++;
        const t = (performance.now() - start) / 1000;
        const readStart = performance.now();
        const { run: done } = await client.getIngestRun({ runId: run!.id });
        const readMs = performance.now() - readStart;
        const ready = done?.documents.filter((d) => d.status === DocumentStatus.READY).length ?? 0;
        if (done?.status !== IngestRunStatus.SUCCEEDED || ready !== documents) {
          throw new Error(`part 4: the run of ${documents} documents ended ${IngestRunStatus[done?.status ?? 0]} with ${ready} ready`);
        }
        out(`One run of ${fmt(documents)} documents (${copies} copies of the corpus, INGEST_WORKERS=${cores}): ${t.toFixed(1)} s, ${fmt(documents / t)} documents/s, ${fmt(events)} events watched; GetIngestRun returned all ${fmt(ready)} results (ready, in order) in ${readMs.toFixed(0)} ms. Load average ${load()}.`);
        out();
      } finally {
        await stack.stop();
      }
    }

    // Listings: collections of LIST_SIZES chunks (chunk size 64 and as many corpus copies as it takes), first page of
    // 10 and a full scan in pages of 1000, each read RUNS times. LIST_SIZES=none skips them.
    if (LIST_SIZES.length > 0) {
      const stack = await startStack({ only: ["ingest"], env: { INGEST_ALLOWED_ROOT: root, LOG_LEVEL: "warn" } });
      try {
        const client = createClient(IngestService, { baseUrl: stack.services.ingest.url, protocol: "grpc" });
        out(`ListChunks by collection: one collection grown a corpus copy at a time (chunk size 64) until it holds at least ${LIST_SIZES.map(fmt).join(", ")} chunks; the first page of 10 and a full scan in pages of 1000, median of ${RUNS} reads; the anchor is the smallest collection.`);
        out();
        out("ListDocuments: the first page of 10 of the same collection, median of the same reads.");
        out();
        out("| chunks in the collection | first page of 10, ms | × anchor | full scan, s | chunks/s | × anchor per chunk | checked | documents | ListDocuments first page of 10, ms | × anchor | load average |");
        out("|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---|");
        let firstAnchor = 0;
        let docsAnchor = 0;
        let perChunkAnchor = 0;
        let copiesIngested = 0;
        let total = 0;
        for (const [k, size] of LIST_SIZES.entries()) {
          // Grow one collection copy by copy until it holds at least `size` chunks.
          while (total < size) {
            const dir = `list-${copiesIngested}`;
            await cp(CORPUS, join(root, dir), { recursive: true, filter: (src) => !src.endsWith("SOURCE.md") });
            const { run } = await client.ingestDocuments({
              collection: "listing",
              chunking: { chunkSizeTokens: 64 },
              sources: [{ source: { case: "serverPath", value: { path: dir } } }],
            });
            for await (const _ of client.watchIngestRun({ runId: run!.id })) void _;
            copiesIngested++;
            total = (await client.listCollections({})).collections.find((c) => c.name === "listing")?.chunkCount ?? 0;
          }
          const firstTimes: number[] = [];
          const docTimes: number[] = [];
          const scanTimes: number[] = [];
          let seen = 0;
          let unique = 0;
          for (let i = 0; i < RUNS; i++) {
            let start = performance.now();
            await client.listChunks({ collection: "listing", page: { pageSize: 10 } });
            firstTimes.push(performance.now() - start);
            start = performance.now();
            const docs = await client.listDocuments({ collection: "listing", page: { pageSize: 10 } });
            docTimes.push(performance.now() - start);
            if (docs.documents.length !== 10) throw new Error(`part 4: the first page of documents holds ${docs.documents.length}`);
            start = performance.now();
            const ids = new Set<string>();
            let pageToken = "";
            seen = 0;
            do {
              const res = await client.listChunks({ collection: "listing", page: { pageSize: 1000, pageToken } });
              for (const c of res.chunks) ids.add(c.id);
              seen += res.chunks.length;
              pageToken = res.page?.nextPageToken ?? "";
            } while (pageToken !== "");
            scanTimes.push((performance.now() - start) / 1000);
            unique = ids.size;
          }
          const first = median(firstTimes);
          const firstDocs = median(docTimes);
          const scan = median(scanTimes);
          const documents = (await client.listCollections({})).collections.find((c) => c.name === "listing")?.documentCount ?? 0;
          if (k === 0) {
            firstAnchor = first;
            docsAnchor = firstDocs;
            perChunkAnchor = scan / seen;
          }
          const ok = seen === total && unique === total;
          out(`| ${fmt(total)} | ${first.toFixed(1)} | ${(first / firstAnchor).toFixed(2)}× | ${scan.toFixed(2)} | ${fmt(seen / scan)} | ${(scan / seen / perChunkAnchor).toFixed(2)}× | ${ok ? "every chunk once" : "MISSING OR REPEATED"} | ${fmt(documents)} | ${firstDocs.toFixed(1)} | ${(firstDocs / docsAnchor).toFixed(2)}× | ${load()} |`);
          if (!ok) throw new Error(`part 4: the scan of ${total} chunks returned ${seen} (${unique} distinct)`);
        }
        out();
      } finally {
        await stack.stop();
      }
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}
