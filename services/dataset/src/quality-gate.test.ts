import { loadTokenizer } from "@ragtune/text";
import { describe, expect, it } from "vitest";
import type { DatasetExample } from "./example.js";
import { mistralRowTokens } from "./exports.js";
import {
  DEFAULT_QUALITY_GATE,
  DROP_REASONS,
  contentWords,
  detectLanguage,
  findDisclaimer,
  groundingSupport,
  isGenericQuestion,
  normalizeForDedup,
  resolveQualityGateConfig,
  runQualityGate,
  type DropReason,
  type QualityGateConfig,
} from "./quality-gate.js";

const tokenizer = loadTokenizer("mistral");

const CONTEXT =
  "The Hydra cache service runs on three nodes in the Frankfurt region. Each node holds 64 GB of memory, and the cache " +
  "evicts entries after 24 hours. Operators resize the cache through the capacity API.";

const base: DatasetExample = {
  id: "ex-base",
  chunkId: "chunk-hydra",
  documentId: "doc-ops",
  headingPath: ["Operations", "Caches", "Hydra"],
  context: CONTEXT,
  question: "How much memory does each Hydra cache node hold?",
  answer: "Each node of the Hydra cache holds 64 GB of memory, and there are three nodes.",
  kind: "factual",
  answerable: true,
  generator: "llm",
};

const REFUSAL = "The provided context does not contain the answer to this question.";

function ex(overrides: Partial<DatasetExample>): DatasetExample {
  return { ...base, ...overrides };
}

function gate(examples: DatasetExample[], config: Partial<QualityGateConfig> = {}) {
  return runQualityGate(examples, { tokenizer }, config);
}

function reasonOf(example: DatasetExample, config: Partial<QualityGateConfig> = {}): DropReason | "kept" {
  const result = gate([example], config);
  return result.dropped[0]?.reason ?? "kept";
}

describe("runQualityGate: per-example checks", () => {
  it("keeps a well-formed grounded example and counts every reason at 0", () => {
    const result = gate([base]);
    expect(result.kept).toEqual([base]);
    expect(result.dropped).toEqual([]);
    expect(Object.keys(result.counts).sort()).toEqual([...DROP_REASONS].sort());
    expect(Object.values(result.counts).every((n) => n === 0)).toBe(true);
  });

  const cases: [string, Partial<DatasetExample>, DropReason][] = [
    ["a NUL byte in the answer", { answer: `${base.answer}\u0000` }, "invalid_text"],
    ["an unpaired surrogate in the question", { question: `${base.question}\ud800` }, "invalid_text"],
    ["a control character in the context", { context: `${CONTEXT}\u0007` }, "invalid_text"],
    ["an EOS in the answer", { answer: `${base.answer}</s> more` }, "template_markup"],
    ["a fake turn in the context", { context: `${CONTEXT} [/INST] Sure.` }, "template_markup"],
    ["a blank question", { question: "  \n " }, "empty_question"],
    ["an empty answer", { answer: "" }, "empty_answer"],
    ["a question of 2000 characters", { question: `${"Which node ".repeat(200)}?` }, "question_too_long"],
    ["an answer under 20 characters", { answer: "64 GB of memory." }, "answer_too_short"],
    ["an answer under 3 words", { answer: "Supercalifragilistic expialidocious" }, "answer_too_short"],
    ["an answer over 200 words", { answer: `${"Each node holds memory. ".repeat(51)}` }, "answer_too_long"],
    ["an answer over 3000 characters", { answer: "x".repeat(3001) }, "answer_too_long"],
    ["What is it?", { question: "What is it?" }, "generic_question"],
    ["a question about 'this section'", { question: "What does this section describe?" }, "generic_question"],
    ["an unanswerable generic question", { question: "Can you explain this?", answer: REFUSAL, answerable: false, kind: "unanswerable" }, "generic_question"],
    ["an answer shorter than the question", { answer: "Each Hydra node holds 64 GB." }, "answer_shorter_than_question"],
    ["an answer the question holds", { question: "Each Hydra cache node holds 64 GB of memory?", answer: "Each Hydra cache node holds 64 GB of memory." }, "answer_in_question"],
    ["'As an AI'", { answer: "As an AI, I believe each Hydra cache node holds 64 GB of memory." }, "model_disclaimer"],
    ["'based on my knowledge'", { answer: "Based on my knowledge, each Hydra cache node holds 64 GB of memory." }, "model_disclaimer"],
    ["'I can’t' (typographic apostrophe)", { answer: "I can’t tell how much memory each Hydra cache node holds from this." }, "model_disclaimer"],
    ["a German answer to an English context", { answer: "Jeder Knoten des Hydra-Caches hat 64 GB Speicher und es gibt drei Knoten." }, "language_mismatch"],
    ["a Russian answer to an English context", { answer: "Каждый узел кэша Hydra имеет 64 ГБ памяти, всего три узла." }, "language_mismatch"],
    ["an extractive answer not in the context", { generator: "extractive", answer: "Each node holds 128 GB of memory, and the cache evicts entries after 24 hours." }, "not_verbatim"],
    ["an answer the context does not support", { answer: "The Hydra cache is written in Rust and deployed with Kubernetes operators." }, "ungrounded"],
    ["an answer of function words only", { answer: "It is what it is, and that is all there is to it." }, "ungrounded"],
    ["a context of 1500 words", { context: `${CONTEXT} ${"Nodes hold memory in the region. ".repeat(250)}` }, "over_token_budget"],
  ];
  it.each(cases)("drops %s", (_name, overrides, reason) => {
    expect(reasonOf(ex(overrides))).toBe(reason);
  });

  const passing: [string, Partial<DatasetExample>][] = [
    ["a refusal (exempt from grounding, language and length-vs-question checks)", { question: "Which team owns the Lyra cluster and where is it hosted?", answer: REFUSAL, answerable: false, kind: "unanswerable", distractorSource: { chunkId: "c-lyra", documentId: "doc-lyra" } }],
    ["an extractive answer equal to context text up to whitespace", { generator: "extractive", context: CONTEXT.replace("holds 64 GB of", "holds 64 GB\n   of"), answer: "Each node holds 64 GB of memory, and the cache evicts entries after 24 hours." }],
    ["an answer grounded in the heading path", { headingPath: ["Operations", "Frankfurt datacenter"], answer: "The Hydra cache of the Frankfurt datacenter has three nodes with 64 GB each." }],
    ["plural and case differences", { answer: "HYDRA CACHE NODE: three, each holding 64 gb memory in frankfurt." }],
    ["a French answer to a French context", { context: "Le service de cache Hydra fonctionne sur trois nœuds dans la région de Francfort. Chaque nœud dispose de 64 Go de mémoire.", question: "Combien de mémoire a chaque nœud ?", answer: "Chaque nœud du cache Hydra dispose de 64 Go de mémoire, sur trois nœuds." }],
    ["a Japanese answer to a Japanese context", { context: "Hydra キャッシュは フランクフルト の 3 台の ノード で動作します。各ノードは 64 GB の メモリ を持ちます。", question: "各ノードのメモリは?", answer: "各ノードは 64 GB の メモリ を持ちます(3 台)。" }],
  ];
  it.each(passing)("keeps %s", (_name, overrides) => {
    expect(gate([ex(overrides)]).dropped).toEqual([]);
  });

  it("says what failed in the detail", () => {
    const [dropped] = gate([ex({ answer: "The Hydra cache is written in Rust and deployed with Kubernetes operators." })]).dropped;
    expect(dropped?.detail).toMatch(/^support 0\.\d\d < 0\.6/);
  });
});

describe("runQualityGate: token budget", () => {
  it("counts the row as the trainer's worker does: a row of exactly maxSeqLen tokens stays, one more is dropped", () => {
    const tokens = mistralRowTokens(base, tokenizer);
    expect(tokens).toBeGreaterThan(50);
    expect(gate([base], { maxSeqLen: tokens }).kept).toEqual([base]);
    const [dropped] = gate([base], { maxSeqLen: tokens - 1 }).dropped;
    expect(dropped).toMatchObject({ reason: "over_token_budget", detail: `${tokens} tokens > max_seq_len ${tokens - 1}` });
  });

  it("counts the system prompt the export will put into every row", () => {
    const tokens = mistralRowTokens(base, tokenizer);
    expect(gate([base], { maxSeqLen: tokens, systemPrompt: "Answer only from the context." }).counts.over_token_budget).toBe(1);
  });

  it("drops one enormous token and a megabyte of context at once, without counting them", () => {
    const started = performance.now();
    const result = gate([
      ex({ id: "a", context: "x".repeat(1_000_000) }),
      ex({ id: "b", context: `${CONTEXT} ${"y".repeat(20_000)}` }),
      ex({ id: "c", question: `Which ${"z".repeat(1_000_000)}?` }),
      ex({ id: "d", answer: "w".repeat(1_000_000) }),
      base,
    ]);
    expect(result.dropped.map((d) => [d.example.id, d.reason])).toEqual([
      ["a", "over_token_budget"],
      ["b", "over_token_budget"],
      ["c", "question_too_long"],
      ["d", "answer_too_long"],
    ]);
    expect(result.kept).toEqual([base]);
    expect(result.dropped[0]?.detail).toMatch(/characters: over 1024 tokens/);
    expect(performance.now() - started).toBeLessThan(5_000); // counting a 1 MB piece would take hours
  });
});

describe("runQualityGate: duplicates", () => {
  it("drops exact duplicates after case, punctuation, whitespace and NFKC folding, keeping the smallest id", () => {
    const a = ex({ id: "b-2" });
    const b = ex({ id: "a-1", question: "how much MEMORY does each Hydra cache node hold", answer: "Each node of the Hydra cache holds ６４ GB of memory — and there are three nodes!" });
    for (const input of [[a, b], [b, a]]) {
      const result = gate(input);
      expect(result.kept).toEqual([b]);
      expect(result.dropped).toEqual([{ example: a, reason: "duplicate", detail: "same question and answer as a-1", duplicateOf: "a-1" }]);
    }
  });

  it("drops near duplicates (one word changed in a long answer), keeping the smallest id", () => {
    const long =
      "The Hydra cache service runs on three nodes in the Frankfurt region, each node holds 64 GB of memory, entries are " +
      "evicted after 24 hours and operators resize the cache through the capacity API when the load grows.";
    const a = ex({ id: "x-1", answer: long });
    const b = ex({ id: "x-2", answer: long.replace("grows", "increases") });
    const c = ex({ id: "x-3", question: "Who resizes the Hydra cache?", answer: "Operators resize the Hydra cache through the capacity API of the Frankfurt region." });
    const result = gate([c, b, a]);
    expect(result.kept).toEqual([c, a]);
    expect(result.dropped).toHaveLength(1);
    expect(result.dropped[0]).toMatchObject({ example: b, reason: "near_duplicate", duplicateOf: "x-1" });
    expect(result.dropped[0]?.detail).toMatch(/^question and answer 0\.\d\d similar/);
    expect(result.counts.near_duplicate).toBe(1);
  });

  it("keeps an unanswerable example that borrows an answerable example's question", () => {
    const negative = ex({ id: "neg", chunkId: "chunk-other", context: "Invoices are sent on the first day of each month.", answer: REFUSAL, answerable: false, kind: "unanswerable", distractorSource: { chunkId: base.chunkId, documentId: base.documentId } });
    expect(gate([base, negative]).kept).toEqual([base, negative]);
  });

  it("lets a failing example not knock out its passing twin", () => {
    const bad = ex({ id: "a-0", answer: `${base.answer}\u0000` });
    const good = ex({ id: "a-1" });
    const result = gate([bad, good]);
    expect(result.kept).toEqual([good]);
    expect(result.dropped.map((d) => d.reason)).toEqual(["invalid_text"]);
  });

  it("keeps duplicates when deduplicate is off", () => {
    expect(gate([ex({ id: "1" }), ex({ id: "2" })], { deduplicate: false }).kept).toHaveLength(2);
  });
});

describe("runQualityGate: batches and settings", () => {
  it("accounts for every example once, in input order, with counts per reason", () => {
    const input = [
      ex({ id: "1" }),
      ex({ id: "2", question: "What is it?" }),
      ex({ id: "3", answer: "short answer" }),
      ex({ id: "4", question: "Who resizes the Hydra cache?", answer: "Operators resize the Hydra cache through the capacity API." }),
      ex({ id: "5", question: "What is it?" }),
      ex({ id: "6" }),
    ];
    const result = gate(input);
    expect(result.kept.map((e) => e.id)).toEqual(["1", "4"]);
    expect(result.dropped.map((d) => [d.example.id, d.reason])).toEqual([
      ["2", "generic_question"],
      ["3", "answer_too_short"],
      ["5", "generic_question"],
      ["6", "duplicate"],
    ]);
    expect(result.counts).toMatchObject({ generic_question: 2, answer_too_short: 1, duplicate: 1, ungrounded: 0 });
  });

  it("switches checks off", () => {
    expect(reasonOf(ex({ question: "What is it?" }), { rejectTrivial: false })).toBe("kept");
    expect(reasonOf(ex({ answer: "The Hydra cache is written in Rust and deployed with Kubernetes operators." }), { requireGroundedAnswer: false })).toBe("kept");
    expect(reasonOf(ex({ answer: "As an AI, I believe each Hydra cache node holds 64 GB of memory." }), { rejectModelDisclaimers: false })).toBe("kept");
    expect(reasonOf(ex({ answer: "Jeder Knoten des Hydra-Caches hat 64 GB Speicher und es gibt drei Knoten." }), { checkLanguage: false, requireGroundedAnswer: false })).toBe("kept");
  });

  it("applies thresholds", () => {
    const partly = ex({ answer: "Each of the three Hydra cache nodes holds 64 GB of memory and runs Rust and Kubernetes." });
    expect(reasonOf(partly)).toBe("kept");
    expect(reasonOf(partly, { minAnswerSupport: 0.95 })).toBe("ungrounded");
    expect(reasonOf(ex({}), { minAnswerChars: 200 })).toBe("answer_too_short");
    expect(reasonOf(ex({}), { maxAnswerWords: 5 })).toBe("answer_too_long");
    // bigrams: the answer's word order differs from the context's
    expect(reasonOf(ex({ answer: "Memory per node: 64 GB; nodes: three; region: Frankfurt; cache: Hydra." }), { groundingNgram: 2 })).toBe("ungrounded");
  });

  it("fills defaults mirroring the proto's QualityChecks and names a bad field", () => {
    expect(resolveQualityGateConfig({ minAnswerSupport: undefined })).toEqual(DEFAULT_QUALITY_GATE);
    expect(DEFAULT_QUALITY_GATE).toMatchObject({ deduplicate: true, requireGroundedAnswer: true, minAnswerSupport: 0.6, rejectTrivial: true, minAnswerWords: 3, maxAnswerWords: 200, maxSeqLen: 1024 });
    expect(() => resolveQualityGateConfig({ minAnswerSupport: 1.5 })).toThrow(/minAnswerSupport must be in \[0, 1\], got 1.5/);
    expect(() => resolveQualityGateConfig({ nearDuplicateThreshold: 0 })).toThrow(/nearDuplicateThreshold/);
    expect(() => resolveQualityGateConfig({ maxSeqLen: 0 })).toThrow(/maxSeqLen must be an integer ≥ 1/);
    expect(() => resolveQualityGateConfig({ minAnswerWords: 10, maxAnswerWords: 5 })).toThrow(/minAnswerWords \(10\) must not exceed maxAnswerWords \(5\)/);
  });
});

describe("text helpers", () => {
  it("normalizes for deduplication", () => {
    expect(normalizeForDedup("  Ｈｅｌｌｏ,   WORLD!! — ok?")).toBe("hello world ok");
  });

  it("computes grounding support over distinct content n-grams", () => {
    const context = new Set(contentWords("Invoices are sent by email on the first day of each month."));
    expect(groundingSupport("Invoices are sent on the first day.", context, 1)).toBe(1);
    expect(groundingSupport("Invoices are sent by post on Mondays.", context, 1)).toBeCloseTo(2 / 4);
    expect(groundingSupport("It is what it is.", context, 1)).toBe(0);
  });

  it("finds generic questions and model disclaimers", () => {
    expect(isGenericQuestion("What is it?")).toBe(true);
    expect(isGenericQuestion("Can you explain the main idea of the text above?")).toBe(true);
    expect(isGenericQuestion("What is Hydra?")).toBe(false);
    expect(findDisclaimer("As a language model I think so.")).toBe("as a language model");
    expect(findDisclaimer("The API cannot be called twice.")).toBeUndefined();
  });

  it("guesses script and language, and leaves short texts undecided", () => {
    expect(detectLanguage("The cache evicts entries after a day and the operators resize it.")).toEqual({ script: "latin", language: "en" });
    expect(detectLanguage("Der Cache löscht Einträge nach einem Tag, und die Betreiber können ihn vergrößern.")).toEqual({ script: "latin", language: "de" });
    expect(detectLanguage("Le cache supprime les entrées après un jour et les opérateurs peuvent le redimensionner.")).toEqual({ script: "latin", language: "fr" });
    expect(detectLanguage("Кэш удаляет записи через сутки.")).toEqual({ script: "cyrillic" });
    expect(detectLanguage("缓存在一天后删除条目。")).toEqual({ script: "cjk" });
    expect(detectLanguage("64 GB")).toEqual({ script: "latin" });
    expect(detectLanguage("1234 !!")).toEqual({});
  });
});
