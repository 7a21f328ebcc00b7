/**
 * Chunking benchmark on ../shared/corpus/aws-docs (issue 12): size 512, overlap 0.
 *   floor     one encode pass over every file with Hugging Face's Rust tokenizer (npm `tokenizers`)
 *   anchor A  @langchain/textsplitters markdown splitter, length = pure-JS @huggingface/tokenizers count
 *   anchor B  the same splitter, length = the Rust tokenizer's count
 *   ragtune   @ragtune/text with its defaults (chunk only on parsed documents, and parse + chunk)
 * Each figure: min and median of RUNS runs after a warm-up, a fresh tokenizer instance per run
 * (its load is timed). Over-budget chunks are counted with the Rust reference tokenizer.
 *
 * Run: npm run bench:chunking -w @ragtune/tools   (RUNS=5 CORPUS=/path/to/aws-docs to override)
 */
import { readFileSync } from "node:fs";
import { relative, resolve } from "node:path";
import { Tokenizer as JsTokenizer } from "@huggingface/tokenizers";
import { RecursiveCharacterTextSplitter } from "@langchain/textsplitters";
import { chunkDocument, documentIdFor, loadTokenizer, parseDocument, tokenizerFile, type ParsedDocument } from "@ragtune/text";
import { AWS_CORPUS_DIR, corpusMarkdownFiles } from "@ragtune/testing";
import { Tokenizer as RustTokenizer } from "tokenizers";

const CHUNK_SIZE = 512;
const RUNS = Number(process.env["RUNS"] ?? 5);
const CORPUS = resolve(process.env["CORPUS"] ?? AWS_CORPUS_DIR);
const TOKENIZER_JSON = tokenizerFile("mistral");


const files = corpusMarkdownFiles(CORPUS);
const texts = files.map((f) => readFileSync(f, "utf8"));
const parsed: ParsedDocument[] = files.map((f, i) => parseDocument({ text: texts[i]!, filename: relative(CORPUS, f) }));
const reference = RustTokenizer.fromFile(TOKENIZER_JSON);
const rustCount = async (tok: RustTokenizer, text: string): Promise<number> =>
  (await tok.encode(text, null, { addSpecialTokens: false })).getIds().length;
let corpusTokens = 0;
for (const t of texts) corpusTokens += await rustCount(reference, t);
const corpusChars = texts.reduce((n, t) => n + t.length, 0);

interface Result {
  chunks: string[];
  recorded?: number[];
}
interface Contestant {
  name: string;
  run: () => Promise<Result>;
}

const tokenizerJson = (): { json: object; config: object } => ({
  json: JSON.parse(readFileSync(TOKENIZER_JSON, "utf8")) as object,
  config: JSON.parse(readFileSync(TOKENIZER_JSON.replace(/tokenizer\.json$/, "tokenizer_config.json"), "utf8")) as object,
});

const langchain = async (length: ((text: string) => number) | ((text: string) => Promise<number>)): Promise<Result> => {
  const splitter = RecursiveCharacterTextSplitter.fromLanguage("markdown", {
    chunkSize: CHUNK_SIZE,
    chunkOverlap: 0,
    lengthFunction: length,
  });
  const chunks: string[] = [];
  for (const text of texts) chunks.push(...(await splitter.splitText(text)));
  return { chunks };
};

const contestants: Contestant[] = [
  {
    name: "floor: Rust `tokenizers` encode pass",
    run: async () => {
      const tok = RustTokenizer.fromFile(TOKENIZER_JSON);
      for (const text of texts) await rustCount(tok, text);
      return { chunks: [] };
    },
  },
  {
    name: "anchor A: LangChain markdown splitter + @huggingface/tokenizers (JS)",
    run: async () => {
      const { json, config } = tokenizerJson();
      const tok = new JsTokenizer(json, config);
      return langchain((text) => tok.encode(text, { add_special_tokens: false }).ids.length);
    },
  },
  {
    name: "anchor B: LangChain markdown splitter + Rust `tokenizers`",
    run: async () => {
      const tok = RustTokenizer.fromFile(TOKENIZER_JSON);
      return langchain((text) => rustCount(tok, text));
    },
  },
  {
    name: "ragtune chunker (parsed documents)",
    run: async () => {
      const tokenizer = loadTokenizer("mistral");
      const chunks = parsed.flatMap((doc) =>
        chunkDocument(doc, { tokenizer, documentId: documentIdFor("bench", doc.filename) }),
      );
      return { chunks: chunks.map((c) => c.text), recorded: chunks.map((c) => c.tokenCount) };
    },
  },
  {
    name: "ragtune parse + chunk (raw Markdown)",
    run: async () => {
      const tokenizer = loadTokenizer("mistral");
      const chunks = files.flatMap((f, i) => {
        const doc = parseDocument({ text: texts[i]!, filename: relative(CORPUS, f) });
        return chunkDocument(doc, { tokenizer, documentId: documentIdFor("bench", doc.filename) });
      });
      return { chunks: chunks.map((c) => c.text), recorded: chunks.map((c) => c.tokenCount) };
    },
  },
];

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

// Warm-up, then runs interleaved round-robin so that load from other processes hits every
// contestant alike (the ratios are the result; absolute times depend on the machine).
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
const rows: string[] = [];
for (const c of contestants) {
  const result = results.get(c)!;
  const runs = times.get(c)!;
  const min = Math.min(...runs);
  const med = median(runs);
  const counts = await reference.encodeBatch(result.chunks, { addSpecialTokens: false });
  const over = counts.filter((e) => e.getIds().length > CHUNK_SIZE).length;
  const exact =
    result.recorded === undefined
      ? "–"
      : counts.every((e, i) => e.getIds().length === result.recorded![i])
        ? "yes"
        : "NO";
  rows.push(
    `| ${c.name} | ${min.toFixed(3)} | ${med.toFixed(3)} | ${(files.length / med).toFixed(0)} | ${Math.round(corpusTokens / med).toLocaleString("en-US")} | ${(med / floorMedian).toFixed(2)}× | ${result.chunks.length || "–"} | ${result.chunks.length ? over : "–"} | ${exact} |`,
  );
}

process.stdout.write(
  [
    `Chunking ${files.length} Markdown files (${corpusChars.toLocaleString("en-US")} characters, ${corpusTokens.toLocaleString("en-US")} Mistral tokens), chunk size ${CHUNK_SIZE}, overlap 0, ${RUNS} runs after a warm-up, tokenizer loaded fresh each run (timed).`,
    "",
    "| splitter | min s | median s | docs/s | tokens/s | × floor (median) | chunks | over budget (reference) | exact counts |",
    "|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ...rows,
    "",
  ].join("\n"),
);
