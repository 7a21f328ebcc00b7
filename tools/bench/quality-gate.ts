/**
 * Quality gate + MinHash benchmark (issue 17) on 100,000 synthetic examples (N to override).
 *
 * Data (seeded, the same in every process): 25,000 chunks of pseudo-English (a Zipf-distributed 4,000-word vocabulary
 * among English function words), 4 examples per chunk (factual/conceptual/comparison/unanswerable, 15 % extractive),
 * with planted cases whose outcome is known:
 *   - failures of each per-example check (generic question, disclaimer, short answer, ungrounded, other language,
 *     not verbatim, template markup, invalid text, over the token budget through 0.5 % oversized chunks);
 *   - exact duplicates (case and punctuation changed) and near-duplicate pairs (the answer of an example edited by
 *     appending, dropping or replacing a word), each pair's true shingle Jaccard computed here.
 * The run is checked: every planted failure must get its reason, every planted pair at or above the 0.8 threshold
 * must be found (recall reported), no pair below it may be reported.
 *
 * Contestants, each in its own process (peak RSS is per contestant), min and median of RUNS runs:
 *   floor     the one thing the gate cannot skip: the Mistral token count of every training row (tokenizer load included)
 *   gate      runQualityGate with every check (tokenizer load included)
 *   gate −dd  the same without deduplication
 * and, like for like on a subset of SUBSET examples (question + answer texts, the same shingles), near-duplicate pairs:
 *   anchor    exact Jaccard of every pair
 *   lsh       MinHash LSH (NearDuplicateIndex.findAll), verified candidates
 *
 * Run: node --conditions=@ragtune/source --import tsx tools/bench/quality-gate.ts   (RUNS=3 N=100000 SUBSET=8000)
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { loadTokenizer } from "@ragtune/text";
import { seededRandom } from "@ragtune/testing";
import { fingerprintText, type DatasetExample, type QuestionKind } from "../../services/dataset/src/example.js";
import { mistralRowTokens } from "../../services/dataset/src/exports.js";
import { NearDuplicateIndex, jaccard, shingleSet } from "../../services/dataset/src/minhash.js";
import { runQualityGate, type DropReason } from "../../services/dataset/src/quality-gate.js";

const N = Number(process.env["N"] ?? 100_000);
const RUNS = Number(process.env["RUNS"] ?? 3);
const SUBSET = Number(process.env["SUBSET"] ?? 8000);
const THRESHOLD = 0.8;
const REFUSAL = "The provided context does not contain the answer to this question.";

const rng = seededRandom;

interface Planted {
  examples: DatasetExample[];
  /** Planted failures and exact duplicates: id → the reason the gate must give. */
  expected: Map<string, DropReason>;
  /** Planted near-duplicate pairs: original id, copy id, true shingle Jaccard of their question + answer. */
  pairs: { original: string; copy: string; similarity: number }[];
}

function generate(n: number): Planted {
  const next = rng(17);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
  const syllables = ["ba", "ke", "lo", "mi", "nu", "ra", "se", "ti", "vo", "za", "dor", "fen", "gal", "hix", "jum", "pra", "quo", "wel", "yst", "cor"];
  const vocab: string[] = [];
  const seen = new Set<string>();
  while (vocab.length < 5000) {
    const parts = 2 + Math.floor(next() * 2);
    let w = "";
    for (let i = 0; i < parts; i++) w += pick(syllables);
    if (!seen.has(w)) {
      seen.add(w);
      vocab.push(w);
    }
  }
  // contexts draw from the first 4,000 words (Zipf, s = 1); ungrounded answers from the last 1,000
  const cdf: number[] = [];
  let total = 0;
  for (let i = 0; i < 4000; i++) cdf.push((total += 1 / (i + 1)));
  const zipf = (): string => {
    const x = next() * total;
    let lo = 0;
    let hi = cdf.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid]! < x) lo = mid + 1;
      else hi = mid;
    }
    return vocab[lo]!;
  };
  const foreign = (): string => vocab[4000 + Math.floor(next() * 1000)]!;
  const uniform = (): string => vocab[Math.floor(next() * 4000)]!;
  const stop = ["the", "of", "and", "to", "in", "is", "for", "with", "on", "by", "as", "that", "are", "from", "this", "it"];
  const sentence = (length: number, word: () => string): string[] => Array.from({ length }, () => (next() < 0.4 ? pick(stop) : word()));
  const text = (words: string[]): string => `${words[0]![0]!.toUpperCase()}${words[0]!.slice(1)} ${words.slice(1).join(" ")}.`;
  const contentOf = (words: string[]): string[] => words.filter((w) => !stop.includes(w));
  const templates = [
    (a: string, b: string) => `What does the ${a} ${b} do?`,
    (a: string, b: string) => `How is ${a} related to ${b}?`,
    (a: string, b: string) => `Why does the ${a} use ${b}?`,
    (a: string, b: string) => `How do ${a} and ${b} compare?`,
  ];
  const question = (words: string[]): string => {
    const content = contentOf(words);
    return pick(templates)(content[0] ?? zipf(), content[1] ?? zipf());
  };

  const examples: DatasetExample[] = [];
  const expected = new Map<string, DropReason>();
  const clean: DatasetExample[] = [];
  const copies = Math.round(n * 0.06);
  const baseCount = n - copies;
  const chunks = Math.ceil(baseCount / 4);
  for (let c = 0; c < chunks && examples.length < baseCount; c++) {
    const oversized = next() < 0.005;
    const sentences = Array.from({ length: oversized ? 120 : 8 + Math.floor(next() * 6) }, () => sentence(12 + Math.floor(next() * 7), zipf));
    const context = sentences.map(text).join(" ");
    // each example of a chunk asks about another sentence (two alike would be duplicates nobody planted)
    const unused = sentences.map((_, i) => i).sort((a, b) => ((Math.imul(a + c + 1, 0x85ebca6b) >>> 0) % 65_521) - ((Math.imul(b + c + 1, 0x85ebca6b) >>> 0) % 65_521));
    const chunkId = `chunk-${String(c).padStart(6, "0")}`;
    const documentId = `doc-${Math.floor(c / 10)}`;
    for (let k = 0; k < 4 && examples.length < baseCount; k++) {
      const id = `e-${String(c).padStart(6, "0")}-${k}`;
      const r = next();
      const kind: QuestionKind = r < 0.45 ? "factual" : r < 0.7 ? "conceptual" : r < 0.85 ? "comparison" : "unanswerable";
      const s = sentences[unused[k]!]!;
      const base: DatasetExample = { id, chunkId, documentId, headingPath: [`Document ${documentId}`, `Part ${c % 7}`], context, question: question(s), answer: "", kind, answerable: kind !== "unanswerable", generator: "llm" };
      let example: DatasetExample;
      if (kind === "unanswerable") {
        // a question about words the context does not hold (drawn uniformly: frequent Zipf words would repeat questions)
        example = { ...base, question: question(sentence(14, uniform)), answer: REFUSAL, distractorSource: { chunkId: `chunk-x${c}`, documentId: "doc-x" } };
      } else if (next() < 0.15) {
        example = { ...base, generator: "extractive", answer: text(s) };
      } else {
        example = { ...base, answer: `In short, ${text(s).toLowerCase()}` };
      }
      if (oversized) {
        // an example that passes every other check, so the budget is what drops it
        if (example.answerable) example = { ...example, generator: "extractive", answer: text(s) };
        expected.set(id, "over_token_budget");
        examples.push(example);
        continue;
      }
      const plant = next();
      if (example.answerable && plant < 0.07) {
        const content = contentOf(s);
        const variants: [DropReason, () => Partial<DatasetExample>][] = [
          ["generic_question", () => ({ question: pick(["What is it?", "What does this section describe?", "Can you explain this?"]) })],
          ["model_disclaimer", () => ({ answer: `As an AI language model, I think ${example.answer}` })],
          ["answer_too_short", () => ({ answer: `${content[0] ?? "x"} ${content[1] ?? "y"}` })],
          ["ungrounded", () => ({ generator: "llm", answer: text(sentence(16, foreign)) })],
          ["language_mismatch", () => ({ generator: "llm", answer: `Der ${content[0]} ist nicht mit dem ${content[1]} und die ${content[2]} wird bei ${content[3]} genutzt.` })],
          ["not_verbatim", () => ({ generator: "extractive", answer: text([...s.slice(0, -1), foreign()]) })],
          ["template_markup", () => ({ answer: `${example.answer} </s>` })],
          ["invalid_text", () => ({ answer: `${example.answer}\u0000` })],
        ];
        const [reason, change] = variants[Math.floor((plant / 0.07) * variants.length)]!;
        example = { ...example, ...change() };
        expected.set(id, reason);
      } else if (example.answerable && example.generator === "llm") clean.push(example);
      examples.push(example);
    }
  }

  // exact duplicates and near-duplicate pairs of clean llm examples; copies sort after their originals (x-, y- > e-)
  const pairs: Planted["pairs"] = [];
  const originals = clean.filter(() => next() < (copies / clean.length) * 1.2).slice(0, copies);
  for (let i = 0; i < originals.length; i++) {
    const original = originals[i]!;
    if (i % 3 === 0) {
      const copy = { ...original, id: `x-${original.id}`, question: original.question.toUpperCase().replace("?", " ??") };
      expected.set(copy.id, "duplicate");
      examples.push(copy);
      continue;
    }
    const words = original.answer.split(" ");
    const edit = i % 3 === 1 ? [...words.slice(0, -1), "today", words.at(-1)!] : words.slice(0, -1).concat(`${words.at(-1)!.replace(".", "")} too.`);
    const copy = { ...original, id: `y-${original.id}`, answer: edit.join(" ") };
    const similarity = jaccard(shingleSet(fingerprintText(original)), shingleSet(fingerprintText(copy)));
    pairs.push({ original: original.id, copy: copy.id, similarity });
    examples.push(copy);
  }
  // the copies sit after the rest; interleave deterministically so the input order is not sorted by kind
  const order = examples.map((_, i) => i).sort((a, b) => ((Math.imul(a + 1, 0x9e3779b1) >>> 0) % 1_000_003) - ((Math.imul(b + 1, 0x9e3779b1) >>> 0) % 1_000_003));
  return { examples: order.map((i) => examples[i]!), expected, pairs };
}

interface ChildResult {
  contestant: string;
  seconds: number;
  examples: number;
  rssBaselineMiB: number;
  peakRssMiB: number;
  check: Record<string, number | string>;
}

const MiB = 1024 * 1024;

function runChild(contestant: string): ChildResult {
  const data = generate(N);
  const rssBaseline = process.memoryUsage().rss;
  const check: Record<string, number | string> = {};
  const started = performance.now();
  let examples = data.examples.length;
  if (contestant === "floor") {
    const tokenizer = loadTokenizer("mistral");
    let tokens = 0;
    for (const e of data.examples) tokens += mistralRowTokens(e, tokenizer);
    check["tokens"] = tokens;
  } else if (contestant === "gate" || contestant === "gate-no-dedup") {
    const tokenizer = loadTokenizer("mistral");
    const result = runQualityGate(data.examples, { tokenizer }, { deduplicate: contestant === "gate" });
    const seconds = (performance.now() - started) / 1000;
    const reasonOf = new Map(result.dropped.map((d) => [d.example.id, d]));
    let plantedRight = 0;
    const wrong: string[] = [];
    for (const [id, reason] of data.expected) {
      if (contestant === "gate-no-dedup" && reason === "duplicate") continue;
      if (reasonOf.get(id)?.reason === reason) plantedRight++;
      else wrong.push(`${id}: ${reasonOf.get(id)?.reason ?? "kept"} instead of ${reason}`);
    }
    check["planted failures right"] = plantedRight;
    check["planted failures wrong"] = wrong.length;
    if (wrong.length > 0) check["first wrong"] = wrong.slice(0, 3).join("; ");
    if (contestant === "gate") {
      let due = 0;
      let found = 0;
      let below = 0;
      for (const pair of data.pairs) {
        const drop = reasonOf.get(pair.copy);
        const hit = drop?.reason === "near_duplicate" && drop.duplicateOf === pair.original;
        if (pair.similarity >= THRESHOLD) {
          due++;
          if (hit) found++;
          else if (process.env["DEBUG"]) process.stderr.write(`missed ${pair.copy} J=${pair.similarity.toFixed(3)} copy: ${drop?.reason ?? "kept"} ${drop?.duplicateOf ?? ""} original: ${reasonOf.get(pair.original)?.reason ?? "kept"}\n`);
        } else if (hit) below++;
      }
      check["planted pairs ≥ 0.8"] = due;
      check["found"] = found;
      check["recall"] = (found / due).toFixed(4);
      check["reported below 0.8"] = below;
      check["pair similarity min"] = Math.min(...data.pairs.map((p) => p.similarity)).toFixed(3);
    }
    // drops no planted case explains (examples the generator meant to be clean)
    const planted = new Set([...data.expected.keys(), ...data.pairs.map((p) => p.copy)]);
    const unexplained = new Map<string, number>();
    for (const d of result.dropped) {
      if (planted.has(d.example.id)) continue;
      unexplained.set(d.reason, (unexplained.get(d.reason) ?? 0) + 1);
      if (process.env["DEBUG"]) process.stderr.write(`unplanted ${d.reason} ${d.detail} ${JSON.stringify(d.example.answer)} ${JSON.stringify(d.example.question)}\n`);
    }
    check["unplanted drops"] = [...unexplained].map(([r, k]) => `${r} ${k}`).join(", ") || "0";
    check["kept"] = result.kept.length;
    return finish(contestant, seconds, examples, rssBaseline, check);
  } else if (contestant === "anchor" || contestant === "lsh") {
    const subset = data.examples.slice(0, SUBSET).map(fingerprintText);
    examples = subset.length;
    const pairs: string[] = [];
    if (contestant === "anchor") {
      const sets = subset.map((t) => shingleSet(t));
      for (let i = 0; i < sets.length; i++) for (let j = 0; j < i; j++) if (jaccard(sets[i]!, sets[j]!) >= THRESHOLD) pairs.push(`${j}-${i}`);
    } else {
      const index = new NearDuplicateIndex({ threshold: THRESHOLD });
      for (let i = 0; i < subset.length; i++) {
        const fp = index.fingerprint(subset[i]!);
        for (const m of index.findAll(fp)) pairs.push(`${m.item}-${i}`);
        index.add(fp);
      }
      check["verifications"] = index.verifications;
    }
    check["pairs"] = pairs.length;
    check["pairList"] = pairs.sort().join(",");
  } else throw new Error(`unknown contestant ${contestant}`);
  return finish(contestant, (performance.now() - started) / 1000, examples, rssBaseline, check);
}

function finish(contestant: string, seconds: number, examples: number, rssBaseline: number, check: ChildResult["check"]): ChildResult {
  return { contestant, seconds, examples, rssBaselineMiB: rssBaseline / MiB, peakRssMiB: (process.resourceUsage().maxRSS * 1024) / MiB, check };
}

if (process.argv[2] === "--child") {
  process.stdout.write(`${JSON.stringify(runChild(process.argv[3]!))}\n`);
} else {
  const script = fileURLToPath(import.meta.url);
  const spawnOne = (contestant: string): ChildResult => {
    const child = spawnSync(process.execPath, [...process.execArgv, script, "--child", contestant], { encoding: "utf8", maxBuffer: 256 * MiB, env: process.env });
    if (child.status !== 0) throw new Error(`${contestant} failed (${child.status}): ${child.stderr}`);
    return JSON.parse(child.stdout) as ChildResult;
  };
  const contestants = ["floor", "gate", "gate-no-dedup", "anchor", "lsh"];
  const results = new Map<string, ChildResult[]>(contestants.map((c) => [c, []]));
  for (let run = 0; run < RUNS; run++) {
    for (const c of contestants) {
      const r = spawnOne(c);
      results.get(c)!.push(r);
      process.stderr.write(`run ${run + 1}/${RUNS} ${c}: ${r.seconds.toFixed(2)} s\n`);
    }
  }
  const median = (xs: number[]): number => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 === 1 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  const row = (c: string, anchor: string, label: string): string => {
    const rs = results.get(c)!;
    const med = median(rs.map((r) => r.seconds));
    const anchorMed = median(results.get(anchor)!.map((r) => r.seconds));
    const min = Math.min(...rs.map((r) => r.seconds));
    const rss = Math.max(...rs.map((r) => r.peakRssMiB));
    const base = median(rs.map((r) => r.rssBaselineMiB));
    return `| ${label} | ${rs[0]!.examples.toLocaleString("en-US")} | ${min.toFixed(2)} | ${med.toFixed(2)} | ${Math.round(rs[0]!.examples / med).toLocaleString("en-US")} | ${(med / anchorMed).toFixed(2)}× | ${Math.round(rss)} MiB (data ${Math.round(base)}) |`;
  };
  console.log(`N=${N} RUNS=${RUNS} SUBSET=${SUBSET}, node ${process.version}`);
  console.log("| contestant | examples | min s | median s | examples/s | × anchor (median) | peak RSS |");
  console.log("|---|---:|---:|---:|---:|---:|---:|");
  console.log(row("floor", "floor", "floor (anchor): Mistral token count of every row"));
  console.log(row("gate", "floor", "quality gate, every check"));
  console.log(row("gate-no-dedup", "floor", "quality gate without deduplication"));
  console.log(row("anchor", "anchor", `near-duplicate pairs, exact Jaccard of all pairs (anchor)`));
  console.log(row("lsh", "anchor", "near-duplicate pairs, MinHash LSH 18×7 + verification"));

  // checks: the same output every run, the planted cases right, LSH pairs ⊆ exact pairs
  let failed = false;
  const fail = (message: string): void => {
    failed = true;
    console.error(`CHECK FAILED: ${message}`);
  };
  for (const c of contestants) {
    const checks = results.get(c)!.map((r) => JSON.stringify(r.check, (k, v: unknown) => (k === "verifications" ? undefined : v)));
    if (new Set(checks).size !== 1) fail(`${c} gave different outputs across runs`);
  }
  const gate = results.get("gate")![0]!.check;
  const noDedup = results.get("gate-no-dedup")![0]!.check;
  const { pairList: exactList, ...exact } = results.get("anchor")![0]!.check;
  const { pairList: lshList, ...lsh } = results.get("lsh")![0]!.check;
  console.log("\ngate:", JSON.stringify(gate));
  console.log("gate without deduplication:", JSON.stringify(noDedup));
  const exactPairs = new Set(String(exactList).split(",").filter(Boolean));
  const lshPairs = String(lshList).split(",").filter(Boolean);
  const lshFound = lshPairs.filter((p) => exactPairs.has(p)).length;
  console.log(`near-duplicate pairs on ${SUBSET} examples: exact ${exactPairs.size}, LSH ${lshPairs.length} (recall ${(lshFound / Math.max(1, exactPairs.size)).toFixed(4)}, ${lsh["verifications"]} candidates verified vs ${((SUBSET * (SUBSET - 1)) / 2).toLocaleString("en-US")} pairs)`, JSON.stringify(exact));
  if (lshFound !== lshPairs.length) fail("LSH reported a pair the exact computation did not");
  if (gate["planted failures wrong"] !== 0) fail(`planted failures with the wrong reason: ${gate["first wrong"]}`);
  if (gate["reported below 0.8"] !== 0) fail("a pair below the threshold was reported");
  if (Number(gate["recall"]) < 0.95) fail(`planted pair recall ${gate["recall"]} < 0.95`);
  if (failed) process.exitCode = 1;
}
