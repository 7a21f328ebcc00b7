/**
 * The quality gate: drops generated examples that would teach the model something wrong or nothing, each with a reason.
 *
 * Per example, in this order (the first failing check is the reason):
 *   invalid_text            a text holds NUL/control characters or an unpaired UTF-16 surrogate (the worker refuses
 *                           such rows: INVALID_UTF8)
 *   template_markup         a text holds `<s>`, `</s>`, `<unk>`, `[INST]` or `[/INST]` (would become special tokens or
 *                           fake turns in the Mistral row)
 *   empty_question          question blank
 *   empty_answer            answer blank
 *   question_too_long       question over maxQuestionChars (default 1000)
 *   answer_too_long         answer over maxAnswerChars (3000) or maxAnswerWords (200)
 *   answer_too_short        answer under minAnswerChars (20) or minAnswerWords (3)
 *   generic_question        no content word left once function words and generic words ("it", "this", "explain",
 *                           "text", "section", …) are removed: "What is it?", "What does this section describe?"
 *   answer_shorter_than_question   answerable answer shorter (characters) than its question
 *   answer_in_question      answerable answer contained in its question (proto: reject_trivial)
 *   model_disclaimer        answerable answer says "as an AI", "based on my knowledge", "I cannot", …
 *   language_mismatch       answerable answer in another script or language than its context (see detectLanguage)
 *   not_verbatim            extractive answer not a substring of its context (whitespace runs compared as one space)
 *   ungrounded              llm answer whose share of content n-grams found in the context (headings included) is
 *                           under minAnswerSupport (0.6); unanswerable examples (the refusal) are exempt
 *   over_token_budget       BOS + prompt + answer + EOS of the mistral-instruct row over maxSeqLen (1024) tokens of the
 *                           target model's tokenizer, counted as the trainer's worker counts them. A row of more than
 *                           16 characters per token of budget is dropped before the content checks, without counting:
 *                           no real text is that dense, and a runaway input (a megabyte without a space) costs nothing.
 * Then across the survivors (proto: deduplicate), each group keeping its smallest id so the outcome does not depend on
 * input order:
 *   duplicate               same question and answer after NFKC, case folding, punctuation and whitespace removal
 *   near_duplicate          question + answer word 5-gram Jaccard ≥ nearDuplicateThreshold (0.8) with a kept example
 *                           (MinHash LSH candidates, verified exactly)
 * rejectTrivial (proto) switches the generic-question, shorter-than-question and in-question checks.
 */
import type { DatasetExample } from "./example.js";
import { fingerprintText } from "./example.js";
import { findTemplateMarkup, mistralRowTokens, type PromptOptions } from "./exports.js";
import { DEFAULT_MINHASH, NearDuplicateIndex, normalizedWords } from "./minhash.js";

export const DROP_REASONS = [
  "invalid_text",
  "template_markup",
  "empty_question",
  "empty_answer",
  "question_too_long",
  "answer_too_short",
  "answer_too_long",
  "generic_question",
  "answer_shorter_than_question",
  "answer_in_question",
  "model_disclaimer",
  "language_mismatch",
  "not_verbatim",
  "ungrounded",
  "over_token_budget",
  "duplicate",
  "near_duplicate",
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/** Gate settings; the first block mirrors the proto's QualityChecks with its defaults. */
export interface QualityGateConfig {
  /** Drop exact and near duplicates. */
  deduplicate: boolean;
  /** Drop llm answers whose content n-grams are not found in the context. */
  requireGroundedAnswer: boolean;
  /** Share of the answer's content n-grams that must occur in the context, 0..1. */
  minAnswerSupport: number;
  /** Generic questions, answers shorter than or contained in their question. */
  rejectTrivial: boolean;
  minAnswerWords: number;
  maxAnswerWords: number;

  minAnswerChars: number;
  maxAnswerChars: number;
  maxQuestionChars: number;
  /** n of the content n-grams of the grounding check (1: content words). */
  groundingNgram: number;
  rejectModelDisclaimers: boolean;
  checkLanguage: boolean;
  /** Jaccard similarity of question + answer word 5-grams from which two examples are near duplicates. */
  nearDuplicateThreshold: number;
  /** Seed of the MinHash functions. */
  seed: number;
  /** Token budget of a training row (the trainer's max_seq_len). */
  maxSeqLen: number;
  /** The system prompt the export will use: it is part of every row's token count. */
  systemPrompt: string;
}

export const DEFAULT_QUALITY_GATE: Readonly<QualityGateConfig> = Object.freeze({
  deduplicate: true,
  requireGroundedAnswer: true,
  minAnswerSupport: 0.6,
  rejectTrivial: true,
  minAnswerWords: 3,
  maxAnswerWords: 200,
  minAnswerChars: 20,
  maxAnswerChars: 3000,
  maxQuestionChars: 1000,
  groundingNgram: 1,
  rejectModelDisclaimers: true,
  checkLanguage: true,
  nearDuplicateThreshold: DEFAULT_MINHASH.threshold,
  seed: DEFAULT_MINHASH.seed,
  maxSeqLen: 1024,
  systemPrompt: "",
});

/** Settings with the defaults filled in; a RangeError names the first bad field. */
export function resolveQualityGateConfig(partial: Partial<QualityGateConfig> = {}): QualityGateConfig {
  const config = { ...DEFAULT_QUALITY_GATE, ...stripUndefined(partial) };
  const fraction = (name: keyof QualityGateConfig, value: number, min: number): void => {
    if (!(value >= min && value <= 1)) throw new RangeError(`${name} must be in ${min === 0 ? "[0, 1]" : "(0, 1]"}, got ${value}`);
  };
  const count = (name: keyof QualityGateConfig, value: number, min: number): void => {
    if (!(Number.isInteger(value) && value >= min)) throw new RangeError(`${name} must be an integer ≥ ${min}, got ${value}`);
  };
  fraction("minAnswerSupport", config.minAnswerSupport, 0);
  if (config.nearDuplicateThreshold <= 0) throw new RangeError(`nearDuplicateThreshold must be in (0, 1], got ${config.nearDuplicateThreshold}`);
  fraction("nearDuplicateThreshold", config.nearDuplicateThreshold, 0);
  count("minAnswerWords", config.minAnswerWords, 0);
  count("maxAnswerWords", config.maxAnswerWords, 1);
  count("minAnswerChars", config.minAnswerChars, 0);
  count("maxAnswerChars", config.maxAnswerChars, 1);
  count("maxQuestionChars", config.maxQuestionChars, 1);
  count("groundingNgram", config.groundingNgram, 1);
  count("maxSeqLen", config.maxSeqLen, 1);
  count("seed", config.seed, 0);
  if (config.minAnswerWords > config.maxAnswerWords) {
    throw new RangeError(`minAnswerWords (${config.minAnswerWords}) must not exceed maxAnswerWords (${config.maxAnswerWords})`);
  }
  return config;
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export interface DroppedExample {
  example: DatasetExample;
  reason: DropReason;
  /** What failed, with the numbers (e.g. "support 0.42 < 0.6"). */
  detail: string;
  /** For duplicate and near_duplicate: the kept example this one repeats. */
  duplicateOf?: string;
}

export interface QualityGateResult {
  /** Examples that passed, in input order. */
  kept: DatasetExample[];
  /** Examples that failed, in input order. */
  dropped: DroppedExample[];
  /** Dropped examples per reason (every reason present, 0 when none). */
  counts: Record<DropReason, number>;
}

export interface QualityGateDeps {
  /** Counts tokens of text without special tokens with the target model's tokenizer (libs/text loadTokenizer). */
  tokenizer: { count(text: string): number };
}

/** Runs every check on a batch of examples. */
export function runQualityGate(examples: readonly DatasetExample[], deps: QualityGateDeps, partial: Partial<QualityGateConfig> = {}): QualityGateResult {
  const config = resolveQualityGateConfig(partial);
  const checker = new ExampleChecker(config, deps.tokenizer);
  const verdicts = new Map<DatasetExample, Omit<DroppedExample, "example">>();
  const survivors: DatasetExample[] = [];
  for (const example of examples) {
    const failure = checker.check(example);
    if (failure === undefined) survivors.push(example);
    else verdicts.set(example, failure);
  }
  if (config.deduplicate) {
    for (const [example, failure] of findDuplicates(survivors, config)) verdicts.set(example, failure);
  }
  const counts = Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>;
  const kept: DatasetExample[] = [];
  const dropped: DroppedExample[] = [];
  for (const example of examples) {
    const failure = verdicts.get(example);
    if (failure === undefined) kept.push(example);
    else {
      dropped.push({ example, ...failure });
      counts[failure.reason]++;
    }
  }
  return { kept, dropped, counts };
}

type Failure = Omit<DroppedExample, "example">;

function byId(a: DatasetExample, b: DatasetExample): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/** Exact, then near duplicates among examples that passed every other check; the smallest id of a group stays. */
function findDuplicates(examples: readonly DatasetExample[], config: QualityGateConfig): Map<DatasetExample, Failure> {
  const out = new Map<DatasetExample, Failure>();
  const sorted = [...examples].sort(byId);
  const firstByKey = new Map<string, DatasetExample>();
  const unique: DatasetExample[] = [];
  for (const example of sorted) {
    const key = `${normalizeForDedup(example.question)}\u0001${normalizeForDedup(example.answer)}`;
    const first = firstByKey.get(key);
    if (first === undefined) {
      firstByKey.set(key, example);
      unique.push(example);
    } else out.set(example, { reason: "duplicate", detail: `same question and answer as ${first.id}`, duplicateOf: first.id });
  }
  const index = new NearDuplicateIndex({ threshold: config.nearDuplicateThreshold, seed: config.seed });
  const keptIds: string[] = [];
  for (const example of unique) {
    const fingerprint = index.fingerprint(fingerprintText(example));
    const match = index.findMatch(fingerprint);
    if (match === undefined) {
      index.add(fingerprint);
      keptIds.push(example.id);
    } else {
      const of = keptIds[match.item]!;
      out.set(example, {
        reason: "near_duplicate",
        detail: `question and answer ${match.similarity.toFixed(2)} similar (word 5-gram Jaccard) to ${of}`,
        duplicateOf: of,
      });
    }
  }
  return out;
}

/** Text compared by exact deduplication: NFKC, lower case, punctuation and symbols removed, whitespace collapsed. */
export function normalizeForDedup(text: string): string {
  return text
    .normalize("NFKC")
    .toLowerCase()
    .replace(/[\p{P}\p{S}]+/gu, " ")
    .replace(/\s+/g, " ")
    .trim();
}

// Function words of the languages detectLanguage tells apart. English is the fullest list (question words included);
// the others hold their most frequent words. Grounding and the generic-question check ignore all of them.
const LANGUAGE_STOP_WORDS: Record<string, string> = {
  en:
    "a about above after again against all also am an and any are as at be because been before being below between both " +
    "but by can cannot could did do does doing down during each either else etc even ever every few for from further " +
    "had has have having he her here hers herself him himself his how however i if in into is it its itself just least " +
    "less let like many may me might more most much must my myself neither no nor not now of off often on once one only " +
    "or other others otherwise our ours ourselves out over own per rather same shall she should since so some such than " +
    "that the their theirs them themselves then there these they this those though through thus to too under until up " +
    "upon us very via was we were what when where whether which while who whom whose why will with within without would " +
    "yet you your yours yourself yourselves",
  de: "der die das und ist nicht ein eine einer eines dem den des mit sich auf für von zu im auch werden wird sind wie oder aber bei nach wenn kann noch nur",
  fr: "le la les et est une des du dans pour pas que qui sur au aux avec ce ces sont par plus ou il elle nous vous être mais leur",
  es: "el la los las y es una del en por con para que se su sus al lo como más pero sin sobre este esta está son ser",
  it: "il lo la gli le e è una del della dei delle per con che non si sono come più ma anche nel nella alla questo",
  nl: "de het een en is van dat die niet op te zijn voor met aan er maar ook als bij om wordt worden naar dan",
  pt: "o a os as e é um uma do da dos das em no na por para com que não se mais como mas ao são pelo pela",
};

const STOP_WORDS = new Set(Object.values(LANGUAGE_STOP_WORDS).flatMap((list) => list.split(" ")));


/** Words that make a question about nothing in particular when nothing else is left. */
const GENERIC_WORDS = new Set(
  (
    "it this that thing things something anything everything stuff explain describe described describes summarize " +
    "summarise summary elaborate tell say says said mean means meaning purpose point main idea topic subject detail details " +
    "information info example examples answer question text passage paragraph context section chunk document page article " +
    "content contents above following mentioned discussed here there talk talks about do does"
  ).split(" "),
);

/** The content words of a text: normalized words without function words, a trailing plural "s" folded. */
export function contentWords(text: string): string[] {
  return contentOf(normalizedWords(text));
}

function contentOf(words: readonly string[]): string[] {
  const out: string[] = [];
  for (const word of words) {
    if (STOP_WORDS.has(word)) continue;
    out.push(word.length > 3 && word.endsWith("s") && !word.endsWith("ss") ? word.slice(0, -1) : word);
  }
  return out;
}

/** The distinct n-grams (n ≥ 1) of a word list; a list shorter than n is one n-gram of all its words. */
export function ngrams(words: readonly string[], n: number): Set<string> {
  const out = new Set<string>();
  if (words.length === 0) return out;
  if (words.length < n) {
    out.add(words.join(" "));
    return out;
  }
  for (let i = 0; i + n <= words.length; i++) out.add(n === 1 ? words[i]! : words.slice(i, i + n).join(" "));
  return out;
}

/**
 * Share of the answer's distinct content n-grams that occur in the context's content n-grams (0 for an answer without
 * content words: nothing in it can be checked against the context). The answer is a text, its normalizedWords, or its
 * content n-grams already made (`ngrams(contentWords(answer), n)`: one answer checked against several contexts).
 */
export function groundingSupport(answer: string | readonly string[] | ReadonlySet<string>, contextNgrams: ReadonlySet<string>, n: number): number {
  const answerNgrams =
    answer instanceof Set
      ? (answer as ReadonlySet<string>)
      : ngrams(typeof answer === "string" ? contentWords(answer) : contentOf(answer as readonly string[]), n);
  if (answerNgrams.size === 0) return 0;
  let found = 0;
  for (const gram of answerNgrams) if (contextNgrams.has(gram)) found++;
  return found / answerNgrams.size;
}

export const SCRIPTS = ["latin", "cyrillic", "greek", "armenian", "hebrew", "arabic", "devanagari", "thai", "georgian", "hangul", "cjk"] as const;
export type Script = (typeof SCRIPTS)[number];

/** Index into SCRIPTS of a code point's script, -1 for anything that is not a letter of those scripts. */
function scriptIndex(cp: number): number {
  if (cp < 0x80) return (cp >= 0x41 && cp <= 0x5a) || (cp >= 0x61 && cp <= 0x7a) ? 0 : -1;
  if ((cp >= 0xc0 && cp <= 0x24f && cp !== 0xd7 && cp !== 0xf7) || (cp >= 0x1e00 && cp <= 0x1eff)) return 0;
  if (cp >= 0x400 && cp <= 0x52f) return 1;
  if ((cp >= 0x370 && cp <= 0x3ff) || (cp >= 0x1f00 && cp <= 0x1fff)) return 2;
  if (cp >= 0x530 && cp <= 0x58f) return 3;
  if (cp >= 0x590 && cp <= 0x5ff) return 4;
  if ((cp >= 0x600 && cp <= 0x6ff) || (cp >= 0x750 && cp <= 0x77f) || (cp >= 0x8a0 && cp <= 0x8ff) || (cp >= 0xfb50 && cp <= 0xfdff) || (cp >= 0xfe70 && cp <= 0xfeff)) return 5;
  if (cp >= 0x900 && cp <= 0x97f) return 6;
  if (cp >= 0xe00 && cp <= 0xe7f) return 7;
  if (cp >= 0x10a0 && cp <= 0x10ff) return 8;
  if ((cp >= 0xac00 && cp <= 0xd7af) || (cp >= 0x1100 && cp <= 0x11ff) || (cp >= 0x3130 && cp <= 0x318f)) return 9;
  if ((cp >= 0x3040 && cp <= 0x30ff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x20000 && cp <= 0x2ffff)) return 10;
  return -1;
}

export interface LanguageGuess {
  /** The script of more than half of the letters; undefined when no script has a majority (or no letters). */
  script?: Script;
  /** For Latin script: en, de, fr, es, it, nl or pt when its stop words clearly dominate; else undefined. */
  language?: string;
}

const LANGUAGES = Object.keys(LANGUAGE_STOP_WORDS);

/** Function word → bit set of the languages (index in LANGUAGES) that use it. */
const LANGUAGE_BITS = new Map<string, number>();
LANGUAGES.forEach((lang, i) => {
  for (const word of LANGUAGE_STOP_WORDS[lang]!.split(" ")) LANGUAGE_BITS.set(word, (LANGUAGE_BITS.get(word) ?? 0) | (1 << i));
});

/**
 * A cheap language guess, good enough to catch an answer written in another language than its context:
 *   1. the script holding the majority of the letters (Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Thai,
 *      Georgian, Armenian, Hangul, or CJK for Chinese and Japanese together);
 *   2. for Latin script, the language among en/de/fr/es/it/nl/pt whose frequent function words occur most often,
 *      provided it has at least 2 hits and at least twice as many as the runner-up.
 * Texts too short to decide get no script or no language, and an undecided side never counts as a mismatch. It does
 * not tell Chinese from Japanese, Russian from Ukrainian, or languages outside the list from each other. Only the
 * first sampleChars characters are read.
 */
export function detectLanguage(text: string, sampleChars = 4000): LanguageGuess {
  const sample = text.length > sampleChars ? text.slice(0, sampleChars) : text;
  const counts = new Int32Array(SCRIPTS.length);
  let letters = 0;
  for (let i = 0; i < sample.length; i++) {
    let cp = sample.charCodeAt(i);
    if (cp >= 0xd800 && cp <= 0xdbff && i + 1 < sample.length) {
      const low = sample.charCodeAt(i + 1);
      if (low >= 0xdc00 && low <= 0xdfff) {
        cp = ((cp - 0xd800) << 10) + (low - 0xdc00) + 0x10000;
        i++;
      }
    }
    const script = scriptIndex(cp);
    if (script < 0) continue;
    letters++;
    counts[script]!++;
  }
  let major = -1;
  for (let s = 0; s < counts.length; s++) if (counts[s]! * 2 > letters) major = s;
  if (major !== 0) return major === -1 ? {} : { script: SCRIPTS[major] };
  const hits = new Int32Array(LANGUAGES.length);
  for (const word of normalizedWords(sample)) {
    const bits = LANGUAGE_BITS.get(word);
    if (bits === undefined) continue;
    for (let l = 0; l < LANGUAGES.length; l++) if (bits & (1 << l)) hits[l]!++;
  }
  let best = 0;
  let second = -1;
  for (let l = 1; l < LANGUAGES.length; l++) {
    if (hits[l]! > hits[best]!) {
      second = best;
      best = l;
    } else if (second === -1 || hits[l]! > hits[second]!) second = l;
  }
  return hits[best]! >= 2 && hits[best]! >= 2 * hits[second]! ? { script: "latin", language: LANGUAGES[best] } : { script: "latin" };
}

const DISCLAIMERS: readonly RegExp[] = [
  /\bas an? (?:ai|artificial intelligence|language model|large language model|llm|ai (?:language )?model|assistant)\b/,
  /\bbased on my (?:own )?(?:knowledge|training|understanding)\b/,
  /\bi (?:cannot|can not|can't|am unable to|am not able to)\b/,
  /\bi (?:do not|don't) have (?:access|information|enough information)\b/,
  /\bmy (?:knowledge cutoff|training data)\b/,
  /\bi(?: am|'m) (?:just |only )?an? (?:ai|language model)\b/,
];

/** The disclaimer phrase an answer holds, if any (NFKC, lower case, typographic apostrophes folded). */
export function findDisclaimer(answer: string): string | undefined {
  const text = answer.normalize("NFKC").toLowerCase().replace(/[\u2018\u2019\u02bc]/g, "'");
  for (const pattern of DISCLAIMERS) {
    const match = pattern.exec(text);
    if (match !== null) return match[0];
  }
  return undefined;
}

/** Whether a question asks about nothing in particular ("What is it?", "Can you explain this section?"). */
export function isGenericQuestion(question: string): boolean {
  return contentWords(question).every((w) => GENERIC_WORDS.has(w));
}

// C0 controls except tab, newline and carriage return; DEL and C1 controls.
const CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function invalidText(text: string): string | undefined {
  if (LONE_SURROGATE.test(text)) return "an unpaired UTF-16 surrogate";
  const control = CONTROL.exec(text);
  if (control !== null) return `the control character U+${control[0].charCodeAt(0).toString(16).padStart(4, "0").toUpperCase()}`;
  return undefined;
}

function collapseWhitespace(text: string): string {
  return text.replace(/\s+/g, " ").trim();
}

/** No real text averages this many characters per token: a longer row is over budget without counting. */
const MAX_CHARS_PER_TOKEN = 16;

/** Per-example checks with the caches they share across a batch (context n-grams and languages per chunk). */
class ExampleChecker {
  private readonly contexts = new Map<string, ContextFacts>();
  private readonly prompt: PromptOptions;

  constructor(
    private readonly config: QualityGateConfig,
    private readonly tokenizer: { count(text: string): number },
  ) {
    this.prompt = { systemPrompt: config.systemPrompt };
  }

  check(example: DatasetExample): Failure | undefined {
    const c = this.config;
    for (const [field, text] of [["question", example.question], ["answer", example.answer]] as const) {
      const problem = invalidText(text);
      if (problem !== undefined) return { reason: "invalid_text", detail: `${field} holds ${problem}` };
    }
    const context = this.contextOf(example);
    if (context.invalid !== undefined) return context.invalid;
    const markup = findTemplateMarkup({ question: example.question, answer: example.answer, context: "", headingPath: [] }, this.prompt);
    if (markup !== undefined) return { reason: "template_markup", detail: `text holds ${JSON.stringify(markup)}` };
    if (context.markup !== undefined) return context.markup;
    const question = example.question.trim();
    const answer = example.answer.trim();
    if (question.length === 0) return { reason: "empty_question", detail: "question is blank" };
    if (answer.length === 0) return { reason: "empty_answer", detail: "answer is blank" };
    if (question.length > c.maxQuestionChars) return { reason: "question_too_long", detail: `${question.length} characters > ${c.maxQuestionChars}` };
    if (answer.length > c.maxAnswerChars) return { reason: "answer_too_long", detail: `${answer.length} characters > ${c.maxAnswerChars}` };
    if (answer.length < c.minAnswerChars) return { reason: "answer_too_short", detail: `${answer.length} characters < ${c.minAnswerChars}` };
    const answerWords = normalizedWords(answer);
    const words = answerWords.length;
    if (words < c.minAnswerWords) return { reason: "answer_too_short", detail: `${words} words < ${c.minAnswerWords}` };
    if (words > c.maxAnswerWords) return { reason: "answer_too_long", detail: `${words} words > ${c.maxAnswerWords}` };
    const oversized = this.checkSize(example);
    if (oversized !== undefined) return oversized;
    if (c.rejectTrivial) {
      if (isGenericQuestion(question)) return { reason: "generic_question", detail: "the question names nothing specific" };
      if (example.answerable) {
        if (answer.length < question.length) {
          return { reason: "answer_shorter_than_question", detail: `answer ${answer.length} characters < question ${question.length}` };
        }
        const normalizedAnswer = normalizeForDedup(answer);
        if (normalizedAnswer.length > 0 && normalizeForDedup(question).includes(normalizedAnswer)) {
          return { reason: "answer_in_question", detail: "the question already holds the answer" };
        }
      }
    }
    if (example.answerable) {
      if (c.rejectModelDisclaimers) {
        const disclaimer = findDisclaimer(answer);
        if (disclaimer !== undefined) return { reason: "model_disclaimer", detail: `answer says ${JSON.stringify(disclaimer)}` };
      }
      if (c.checkLanguage) {
        context.language ??= detectLanguage(context.context);
        if (context.language.script !== undefined) {
          const mismatch = languageMismatch(detectLanguage(answer), context.language);
          if (mismatch !== undefined) return { reason: "language_mismatch", detail: mismatch };
        }
      }
      if (example.generator === "extractive") {
        if (!collapseWhitespace(example.context).includes(collapseWhitespace(answer))) {
          return { reason: "not_verbatim", detail: "extractive answer is not a substring of its context" };
        }
      } else if (c.requireGroundedAnswer) {
        context.ngrams ??= ngrams(contentWords(`${context.headings}\n${context.context}`), c.groundingNgram);
        const support = groundingSupport(answerWords, context.ngrams, c.groundingNgram);
        if (support < c.minAnswerSupport) {
          return { reason: "ungrounded", detail: `support ${support.toFixed(2)} < ${c.minAnswerSupport} (content ${c.groundingNgram}-grams of the answer found in the context)` };
        }
      }
    }
    return this.checkBudget(example);
  }

  /** Over budget by size alone: no need to look at (or count) a runaway text. */
  private checkSize(example: DatasetExample): Failure | undefined {
    const max = this.config.maxSeqLen;
    const chars = example.context.length + example.question.length + example.answer.length + example.headingPath.reduce((n, h) => n + h.length, 0) + this.config.systemPrompt.length;
    if (chars > max * MAX_CHARS_PER_TOKEN) {
      return { reason: "over_token_budget", detail: `${chars} characters: over ${max} tokens at any plausible ${MAX_CHARS_PER_TOKEN} characters per token` };
    }
    return undefined;
  }

  private checkBudget(example: DatasetExample): Failure | undefined {
    const max = this.config.maxSeqLen;
    const tokens = mistralRowTokens(example, this.tokenizer, this.prompt);
    return tokens > max ? { reason: "over_token_budget", detail: `${tokens} tokens > max_seq_len ${max}` } : undefined;
  }

  /** What the checks need to know about an example's context, computed once per chunk. */
  private contextOf(example: DatasetExample): ContextFacts {
    const headings = example.headingPath.join("\n");
    const cached = this.contexts.get(example.chunkId);
    if (cached !== undefined && cached.context === example.context && cached.headings === headings) return cached;
    let invalid: Failure | undefined;
    for (const [field, text] of [["context", example.context], ["headingPath", headings]] as const) {
      const problem = invalidText(text);
      if (problem !== undefined && invalid === undefined) invalid = { reason: "invalid_text", detail: `${field} holds ${problem}` };
    }
    const markup = findTemplateMarkup({ question: "", answer: "", context: example.context, headingPath: example.headingPath });
    const facts: ContextFacts = {
      context: example.context,
      headings,
      invalid,
      markup: markup === undefined ? undefined : { reason: "template_markup", detail: `text holds ${JSON.stringify(markup)}` },
    };
    this.contexts.set(example.chunkId, facts);
    return facts;
  }
}

interface ContextFacts {
  context: string;
  /** The heading path joined with newlines. */
  headings: string;
  invalid: Failure | undefined;
  markup: Failure | undefined;
  /** Content n-grams of headings and context, once the grounding check needs them. */
  ngrams?: Set<string>;
  /** Once the language check needs it. */
  language?: LanguageGuess;
}

function languageMismatch(answer: LanguageGuess, context: LanguageGuess): string | undefined {
  if (answer.script !== undefined && context.script !== undefined && answer.script !== context.script) {
    return `answer in ${answer.script} script, context in ${context.script}`;
  }
  if (answer.language !== undefined && context.language !== undefined && answer.language !== context.language) {
    return `answer in ${answer.language}, context in ${context.language}`;
  }
  return undefined;
}
