/**
 * The extractive generator: question–answer pairs built from a chunk without a language model, for collections
 * generated with no model endpoint and as a baseline beside the model-written examples.
 *
 * Every answer is a verbatim slice of the chunk text (`context.slice(answerStart, answerStart + answer.length)`), so it
 * is grounded by construction; the question is written around it by a fixed set of patterns over the chunk's
 * sentences, lists and headings (see ExtractivePattern). Code blocks, tables, URL-only lines and image placeholders
 * never give a question or an answer. The generator is pure and deterministic: the same chunk, options and seed give
 * the same examples in the same order.
 */
import { createHash } from "node:crypto";
import type { DatasetExample, QuestionKind } from "./example.js";
import { contentTermSet, stem } from "./text-similarity.js";

/** What the generators need of a chunk; the proto `ragtune.ingest.v1.Chunk` has these fields. */
export interface SourceChunk {
  id: string;
  documentId: string;
  /** Headings from the outermost to the innermost, e.g. ["Guide", "Section", "Subsection"]. */
  headingPath: readonly string[];
  text: string;
}

/**
 * The rule a question came from.
 * - `definition`: "X is/are a|an|the …", "X means/refers to/stands for …" → "What is X?" (conceptual)
 * - `purpose`: "X is used to/for …", "X is called …" → "What is X used for?" (factual)
 * - `code-subject`: "`command` creates …" → "What does `command` do?" (factual)
 * - `quantity`: "A book holds at most 200 bindings." → "How many bindings does a book hold?" (factual)
 * - `procedure`: "To correct a mistake, reverse …" → "How do you correct a mistake?" (conceptual)
 * - `condition`: "If X, retry …" → "What should you do if X?"; "If X, Y." → "What happens if X?" (factual)
 * - `comparison`: two contrasting subjects ("a minor release …; a major release …", or two adjacent definitions)
 *   → "What is the difference between A and B?" (comparison)
 * - `enumeration`: "The following rules apply …:" + a list → "Which rules apply …?", answered by the list (factual)
 * - `heading-question`: a heading that is a question (FAQ) → the heading, answered by the first sentences (factual)
 * - `heading-procedure`: "Configuring TLS" / "How to configure TLS" → "How do you configure TLS?" (conceptual)
 * - `heading-problem`: a heading under "Troubleshooting" → "What should you do when …?" (factual)
 * - `heading-topic`: any other heading → 'What does the section "H" say about …?' (conceptual)
 */
export type ExtractivePattern =
  | "definition"
  | "purpose"
  | "code-subject"
  | "quantity"
  | "procedure"
  | "condition"
  | "comparison"
  | "enumeration"
  | "heading-question"
  | "heading-procedure"
  | "heading-problem"
  | "heading-topic";

export type AnswerableKind = Exclude<QuestionKind, "unanswerable">;

/** An example of the extractive generator: a DatasetExample whose answer is `context` from answerStart, verbatim. */
export interface ExtractiveExample extends DatasetExample {
  kind: AnswerableKind;
  answerable: true;
  generator: "extractive";
  pattern: ExtractivePattern;
  /** Offset of the answer in `context` (UTF-16 code units). */
  answerStart: number;
}

export interface ExtractiveOptions {
  /** Most questions per chunk, 1..20 (default 3). */
  questionsPerChunk?: number;
  /** Shortest answer in characters (default 20). */
  minAnswerChars?: number;
  /** Longest answer in characters (default 600). */
  maxAnswerChars?: number;
  /** Breaks ties between equally good candidates; another seed may pick other questions (default 42). */
  seed?: number;
}

export const EXTRACTIVE_DEFAULTS = {
  questionsPerChunk: 3,
  minAnswerChars: 20,
  maxAnswerChars: 600,
  seed: 42,
} as const satisfies Required<ExtractiveOptions>;

// ---------------------------------------------------------------------------------------------------------------------
// Segmentation: a chunk as blocks (heading, prose, list, table, code, other) and sentences with offsets.

export type BlockKind = "heading" | "prose" | "list" | "table" | "code" | "other";

/** [start, end) in the chunk text. */
export interface TextSpan {
  start: number;
  end: number;
}

export interface Block extends TextSpan {
  kind: BlockKind;
  /** Sentences of a prose block or of the items of a list (trimmed spans); empty for other kinds. */
  sentences: TextSpan[];
  /** The items of a list, from the first character after the marker to the end of the item. */
  items: TextSpan[];
}

interface Line extends TextSpan {
  text: string;
}

const FENCE = /^\s*(?:```|~~~)/;
const LIST_MARKER = /^(\s*)(?:[-*+•]|\d{1,3}[.)])\s+/;
const URL_ONLY = /^\s*<?(?:https?:\/\/|www\.)\S+>?\s*$/i;
const PLACEHOLDER = /^\s*\[[^\]]*\]\s*$/;

function linesOf(text: string): Line[] {
  const lines: Line[] = [];
  let start = 0;
  while (start <= text.length) {
    let end = text.indexOf("\n", start);
    if (end === -1) end = text.length;
    const lineEnd = end > start && text[end - 1] === "\r" ? end - 1 : end;
    lines.push({ start, end: lineEnd, text: text.slice(start, lineEnd) });
    start = end + 1;
  }
  return lines;
}

function isTableRow(line: string): boolean {
  const t = line.trim();
  if (/^\|.*\|$/.test(t) || /^[|:\s-]+$/.test(t) && t.includes("|") && t.includes("-")) return true;
  return (t.match(/ \| /g) ?? []).length >= 1;
}

/** A line of code outside a fence (a chunk may start in the middle of a code block): mostly symbols, no prose end. */
function looksLikeCode(line: string): boolean {
  const t = line.trim().replace(/`[^`]*`/g, "x");
  if (t.length === 0) return false;
  if (/^(?:\$|#!|\/\/|<\/?[a-z][\w-]*[\s>])/.test(t)) return true;
  const symbols = (t.match(/[{}[\]();=<>$\\]/g) ?? []).length;
  return symbols / t.length > 0.12 && !/[.!?]$/.test(t);
}

/** A short title-like line: no terminal punctuation, at most 8 words, starts with a capital or a digit. */
function isTitleLine(line: string): boolean {
  const t = line.trim();
  if (t.length === 0 || t.length > 80) return false;
  if (/[.!?:;,]$/.test(t)) return false;
  if (!/^[\p{Lu}\d"'`]/u.test(t)) return false;
  return t.split(/\s+/).length <= 8;
}

/**
 * Splits a chunk into blocks: the heading line (the chunk's first line when it repeats the innermost heading, a
 * Markdown `#` line, or a short title line such as "Note"), prose paragraphs, lists, tables, code (fenced or
 * symbol-heavy lines) and other lines (URLs only, image placeholders). Prose and list items are split into sentences.
 */
export function segmentChunk(text: string, headingPath: readonly string[] = []): Block[] {
  const lines = linesOf(text);
  const heading = headingPath.at(-1)?.trim();
  const blocks: Block[] = [];
  let current: Block | undefined;
  const close = (): void => {
    if (current === undefined) return;
    if (current.kind === "prose") current.sentences = splitSentences(text, current.start, current.end);
    if (current.kind === "list") current.sentences = current.items.flatMap((item) => splitSentences(text, item.start, item.end));
    blocks.push(current);
    current = undefined;
  };
  const open = (kind: BlockKind, line: Line): Block => {
    close();
    current = { kind, start: line.start, end: line.end, sentences: [], items: [] };
    return current;
  };
  // The next line with text after each line, found in one backward pass.
  const nextText: (Line | undefined)[] = new Array<Line | undefined>(lines.length);
  for (let j = lines.length - 1, next: Line | undefined; j >= 0; j--) {
    nextText[j] = next;
    if (lines[j]!.text.trim().length > 0) next = lines[j];
  }
  const nextNonBlank = (i: number): Line | undefined => nextText[i];

  let inFence = false;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const t = line.text.trim();
    if (inFence) {
      current!.end = line.end;
      if (FENCE.test(line.text)) {
        inFence = false;
        close();
      }
      continue;
    }
    if (FENCE.test(line.text)) {
      open("code", line);
      inFence = true;
      continue;
    }
    if (t.length === 0) {
      // A blank line ends a paragraph; a list goes on when its next item follows the blank line.
      if (current?.kind === "list" && LIST_MARKER.test(nextNonBlank(i)?.text ?? "")) continue;
      close();
      continue;
    }
    const isFirstLine = blocks.length === 0 && current === undefined;
    if ((isFirstLine && heading !== undefined && t === heading) || /^#{1,6}\s/.test(t)) {
      open("heading", line);
      close();
      continue;
    }
    if (URL_ONLY.test(t) || PLACEHOLDER.test(t)) {
      open("other", line);
      close();
      continue;
    }
    if (isTableRow(t)) {
      if (current?.kind === "table") current.end = line.end;
      else open("table", line);
      continue;
    }
    const marker = LIST_MARKER.exec(line.text);
    if (marker !== null) {
      const block = current?.kind === "list" ? current : open("list", line);
      block.end = line.end;
      block.items.push({ start: line.start + marker[0].length, end: line.end });
      continue;
    }
    if (looksLikeCode(t)) {
      if (current?.kind === "code") current.end = line.end;
      else open("code", line);
      continue;
    }
    if (current?.kind === "list" && /^\s+/.test(line.text)) {
      // An indented continuation line of the last item.
      current.end = line.end;
      current.items.at(-1)!.end = line.end;
      continue;
    }
    const next = lines[i + 1];
    const startsParagraph = current?.kind !== "prose";
    if (startsParagraph && isTitleLine(t) && (next === undefined || next.text.trim().length === 0 || !isTitleLine(next.text))) {
      // "Reusing bucket names" above its paragraph, or "Note" / "Topics" on a line of its own.
      open("heading", line);
      close();
      continue;
    }
    if (current?.kind === "prose") current.end = line.end;
    else open("prose", line);
  }
  close();
  return blocks;
}

const ABBREVIATIONS = new Set([
  "e.g", "i.e", "etc", "vs", "inc", "ltd", "corp", "co", "mr", "mrs", "ms", "dr", "st", "approx", "fig", "cf", "al",
]);

/**
 * Sentences of text[start, end), trimmed. A sentence ends at . ! or ? (after any closing quotes, brackets or `**`)
 * followed by whitespace and a capital, digit, quote, bracket or backtick, or at a colon that ends a line; never inside
 * inline code or brackets, nor after an abbreviation or an initial ("e.g.", "N.").
 */
export function splitSentences(text: string, start: number, end: number): TextSpan[] {
  const spans: TextSpan[] = [];
  let sentenceStart = start;
  let inCode = false;
  let depth = 0;
  const push = (to: number): void => {
    let s = sentenceStart;
    let e = to;
    while (s < e && /\s/.test(text[s]!)) s++;
    while (e > s && /\s/.test(text[e - 1]!)) e--;
    if (e > s) spans.push({ start: s, end: e });
    sentenceStart = to;
  };
  for (let i = start; i < end; i++) {
    const ch = text[i]!;
    if (ch === "`") {
      inCode = !inCode;
      continue;
    }
    if (inCode) continue;
    if (ch === "(" || ch === "[") depth++;
    else if ((ch === ")" || ch === "]") && depth > 0) depth--;
    if (ch === ":" && depth === 0) {
      let j = i + 1;
      while (j < end && (text[j] === " " || text[j] === "\t")) j++;
      if (j >= end || text[j] === "\n" || text[j] === "\r") push(i + 1);
      continue;
    }
    if ((ch !== "." && ch !== "!" && ch !== "?") || depth > 0) continue;
    let j = i + 1;
    while (j < end && /["')\]*]/.test(text[j]!)) j++;
    if (j >= end) {
      push(end);
      i = end;
      break;
    }
    if (!/\s/.test(text[j]!)) continue;
    let k = j;
    while (k < end && /\s/.test(text[k]!)) k++;
    if (k < end && !/[\p{Lu}\d"'`([*]/u.test(text[k]!)) continue;
    if (ch === ".") {
      const word = /([\p{L}.]+)$/u.exec(text.slice(Math.max(start, i - 12), i))?.[1] ?? "";
      if (ABBREVIATIONS.has(word.toLowerCase()) || /^\p{Lu}$/u.test(word)) continue;
      // "No. 5" is a number; "No. Committed entries …" is an answer.
      if (/^no$/i.test(word) && /\d/.test(text[k] ?? "")) continue;
    }
    push(j);
  }
  if (sentenceStart < end) push(end);
  return spans;
}

// ---------------------------------------------------------------------------------------------------------------------
// Words and phrases.

const DETERMINERS = new Set(["a", "an", "the", "every", "each", "all", "some", "any", "most", "many", "your", "our", "its", "their"]);
const PRONOUNS = new Set(
  "it its they them their theirs this that these those he she him her itself themselves".split(" "),
);
const PREPOSITIONS = new Set("with in on at for to from by of into onto over under about through".split(" "));
const MODALS = new Set(["can", "cannot", "may", "might", "must", "should", "will", "would", "could", "shall"]);
const AUXILIARIES = new Set(["is", "are", "was", "were", "be", "been", "has", "have", "had", "does", "do", "did", ...MODALS]);
const BAD_SUBJECT_START = new Set([
  ...PRONOUNS, "there", "here", "we", "you", "which", "what", "who", "whom", "whose", "why", "how", "if", "when", "while",
  "whenever", "where", "for", "in", "on", "at", "by", "with", "after", "before", "although", "though", "because", "since",
  "unless", "until", "to", "from", "as", "so", "but", "and", "or", "then", "now", "today", "also", "only", "both", "all",
  "some", "most", "many", "each", "every", "any", "no", "none", "one", "another", "other", "such", "either", "neither",
  "instead", "however", "otherwise", "therefore", "thus", "note", "see", "yes", "not", "just", "even", "once", "next",
  "first", "finally", "here's", "there's", "it's", "let's",
]);
const SUBJECT_STOP = new Set([
  ...MODALS, "not", "no", "that", "which", "who", "where", "when", "if", "because", "also", "only", "then", "now",
  "usually", "often", "always", "never", "still", "already", "is", "are", "was", "were", "has", "have", "does", "do",
]);
const GENERIC_HEADS = new Set([
  "default", "minimum", "maximum", "result", "reason", "value", "problem", "difference", "goal", "purpose", "solution",
  "way", "answer", "rest", "following", "same", "first", "last", "other", "one", "thing", "case", "example", "idea",
  "effect", "limit", "option", "step", "part", "type", "kind", "number", "amount", "list", "command", "setting", "name",
]);

/** Common documentation verbs (base forms) that may follow a subject; enough to find where a subject ends. */
const VERBS = new Set(
  (
    "accept allow answer apply begin bill buffer cache call carry change charge check close compute connect contain copy " +
    "cost count cover create decrypt delete differ disable download emit enable encrypt end exceed execute expire fail " +
    "fetch finish follow generate get give grow handle hold include invoke keep last let limit list live load log lose " +
    "make mean move need offer open post print process produce provide reach read receive record refresh reject remain " +
    "remember replicate report require respond restart retain retry return rotate run save scale send serve show shrink " +
    "sign span start stay stop store stream support take tolerate track trigger update upload use validate verify wait " +
    "write"
  ).split(" "),
);

/** "holds" → "hold", "carries" → "carry", "matches" → "match", "has" → "have", "does" → "do". */
export function thirdPersonToBase(verb: string): string {
  const v = verb.toLowerCase();
  const irregular: Record<string, string> = { has: "have", does: "do", goes: "go", is: "be", are: "be" };
  if (irregular[v] !== undefined) return irregular[v];
  if (v.endsWith("ies") && v.length > 4) return `${v.slice(0, -3)}y`;
  if (/(?:ch|sh|ss|x|z|o)es$/.test(v)) return v.slice(0, -2);
  if (v.endsWith("s") && !v.endsWith("ss")) return v.slice(0, -1);
  return v;
}

function isVerbForm(word: string): boolean {
  const w = word.toLowerCase();
  return AUXILIARIES.has(w) || VERBS.has(w) || (w.endsWith("s") && VERBS.has(thirdPersonToBase(w)));
}

/** Gerunds that head noun phrases in headings ("Logging settings", "Pricing"): not "How do you …" material. */
const NOMINAL_GERUNDS = new Set([
  "logging", "pricing", "networking", "billing", "caching", "routing", "scaling", "troubleshooting", "naming", "monitoring",
  "versioning", "encoding", "streaming", "accounting", "batching", "queuing", "queueing", "tagging", "reporting",
  "testing", "building", "rendering", "processing", "breaking", "existing", "missing", "pending", "remaining",
  "following", "upcoming", "outgoing", "incoming", "leading", "trailing", "matching", "resulting", "underlying",
  "corresponding", "something", "nothing", "everything", "anything", "string",
  "thing", "spring", "during", "ceiling", "morning", "evening", "king", "ring", "wing", "bring", "sing", "swing", "sting",
]);
/** Nouns that, after a gerund, make the heading a noun phrase ("Logging settings", "Signing keys"). */
const NOMINAL_HEADS = new Set([
  "settings", "setting", "options", "rules", "levels", "limits", "policies", "policy", "configuration", "concepts",
  "overview", "metrics", "quotas", "basics", "reference", "requirements", "considerations", "guidelines", "errors",
  "problems", "issues", "examples", "example", "tips", "modes", "mode", "permissions", "support", "features", "costs",
  "charges", "behavior", "behaviour", "model", "format", "formats", "headers", "conventions", "patterns", "types",
  "keys", "key", "service", "services", "system", "process", "data", "details", "status", "api", "apis", "tools",
  "changes", "change", "classes", "class", "capacity", "notes", "times", "time", "rates", "rate", "requests", "request",
]);
const GERUND_EXCEPTIONS: Record<string, string> = {
  creating: "create", recreating: "recreate", caching: "cache", routing: "route", scaling: "scale", styling: "style",
  pasting: "paste", syncing: "sync",
  focusing: "focus", aliasing: "alias", biasing: "bias", developing: "develop", enveloping: "envelop", pivoting: "pivot",
  controlling: "control", cancelling: "cancel", labelling: "label", modelling: "model", travelling: "travel",
  changing: "change", arranging: "arrange", exchanging: "exchange", ranging: "range", zoning: "zone", writing: "write",
  rewriting: "rewrite", overwriting: "overwrite", inviting: "invite", citing: "cite", uniting: "unite", deleting: "delete",
  completing: "complete", competing: "compete", storing: "store", restoring: "restore", ignoring: "ignore",
  exploring: "explore", scoring: "score", interfering: "interfere", adhering: "adhere", adding: "add", erring: "err",
  filing: "file", compiling: "compile", reconciling: "reconcile", scheduling: "schedule", being: "be", seeing: "see",
  using: "use", reusing: "reuse", doing: "do", going: "go", having: "have", getting: "get", setting: "set",
};

/**
 * The base form of an "-ing" verb ("Configuring" → "configure", "Stopping" → "stop", "Installing" → "install"), or
 * undefined for a word that is not a gerund. Exceptions first, then the usual spelling rules: a doubled final consonant
 * is undoubled, a silent e is restored after the endings that take one in English base forms (…ate, …ure, …ide, …ize,
 * …ve, a consonant + le, one vowel + g, …).
 */
export function gerundToBase(word: string): string | undefined {
  const w = word.toLowerCase();
  if (!/^[a-z]+ing$/.test(w) || w.length < 5) return undefined;
  if (GERUND_EXCEPTIONS[w] !== undefined) return GERUND_EXCEPTIONS[w];
  const s = w.slice(0, -3);
  if (/([bdgmnprtz])\1$/.test(s)) return s.slice(0, -1);
  // Endings no base form adds an e to: "install", "check", "start", "follow", "fix".
  if (/[aeiouy]$/.test(s) || /(?:ll|ss|ff|ck|sh|ch|th|gh|ng|nd|nt|st|rt|rn|rm|rk|lt|ld|lp|mp|sk|sp|ct|pt|ft|wn|ws|wl|x|w|h|f)$/.test(s)) {
    return s;
  }
  const addE =
    /[vz]$/.test(s) ||
    (/c$/.test(s) && s !== "sync") ||
    /[^aeiouls]l$/.test(s) ||
    /[^aeiou][iuo]l$/.test(s) ||
    /[^eo]at$/.test(s) ||
    /[^aeiou]ut$/.test(s) ||
    /[^o]ot$/.test(s) ||
    /[^o]id$/.test(s) ||
    /[^aeiou][aiou]d$/.test(s) ||
    /[^aeiou][aeiou]k$/.test(s) ||
    /[^aeiou][aeiou]m$/.test(s) ||
    /[^aeiou][iu]n$/.test(s) ||
    /[^aeiou][aeiou]p$/.test(s) ||
    /[^aeiou][ui]r$/.test(s) ||
    /uir$/.test(s) ||
    /[^e]ar$/.test(s) ||
    /[^s]s$/.test(s) ||
    /[aeiou]g$/.test(s) ||
    /[rd]g$/.test(s) ||
    /[aeiou]b$/.test(s);
  return addE ? `${s}e` : s;
}

/** Capitalized words that a text also capitalizes in mid-sentence ("Amazon", "Lambda"): names, kept as written. */
export function namesIn(text: string): ReadonlySet<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/[\p{Ll},;(][ \t]+(\p{Lu}\p{Ll}+)\b/gu)) names.add(m[1]!);
  return names;
}

/**
 * Lowercases the first word of a phrase when it is an article or an ordinary capitalized word, not a name: a name is
 * followed by another capitalized word ("Amazon S3", "Acme Ledger") or capitalized in mid-sentence in the text
 * (`names`, see namesIn).
 */
export function lowerInitial(phrase: string, names: ReadonlySet<string>): string {
  const match = /^(\S+)(\s+\S+)?/.exec(phrase);
  if (match === null) return phrase;
  const first = match[1]!;
  if (DETERMINERS.has(first.toLowerCase())) return first.toLowerCase() + phrase.slice(first.length);
  if (!/^\p{Lu}\p{Ll}+(?:-\p{Ll}+)*$/u.test(first)) return phrase;
  // "Amazon S3", "Acme Ledger": a capitalized word followed by another is most likely a name.
  if (match[2] !== undefined && /^\s+\p{Lu}/u.test(match[2])) return phrase;
  if (names.has(first)) return phrase;
  return first.toLowerCase() + phrase.slice(first.length);
}

function words(text: string): string[] {
  return text.trim().split(/\s+/).filter((w) => w.length > 0);
}

function bareWord(word: string): string {
  return word.toLowerCase().replace(/^[^\p{L}\p{N}`]+|[^\p{L}\p{N}`]+$/gu, "");
}

function hasPronoun(text: string): boolean {
  return words(text).some((w) => PRONOUNS.has(bareWord(w)));
}

/** A noun phrase fit to be asked about: 1..maxWords words, no clause punctuation, not led by a pronoun or conjunction. */
function isGoodSubject(subject: string, maxWords = 8): boolean {
  const ws = words(subject);
  if (ws.length === 0 || ws.length > maxWords) return false;
  // Inline code and an acronym in brackets ("Same-Region Replication (SRR)") belong to a noun phrase; other
  // punctuation means a clause.
  if (/[,;:()"*[\]!?]/.test(subject.replace(/`[^`]*`/g, "x").replace(/\s\([\p{Lu}\d-]{2,10}\)/gu, ""))) return false;
  if (!/^[\p{Lu}\d`]/u.test(subject)) return false;
  if (BAD_SUBJECT_START.has(bareWord(ws[0]!))) return false;
  // "`Bulk` - Bulk retrievals", "Aliases – An alias": a list label in front of the subject.
  if (/\s[-–—]\s/.test(subject)) return false;
  // "Spreading requests across many connections", "testing your function": a gerund clause, not a noun phrase.
  if (/^\p{Lu}\p{Ll}+ing$/u.test(ws[0]!) && ws.length >= 3) return false;
  if (ws.some((w) => ["your", "my", "our"].includes(w.toLowerCase()))) return false;
  // "Currently Amazon S3 …", "Optionally, …": an adverb leads a clause, not a noun phrase.
  if (/^\p{Lu}\p{Ll}+ly$/u.test(ws[0]!)) return false;
  // "Start with the server …": an imperative, not a subject.
  if (ws.length > 1 && VERBS.has(ws[0]!.toLowerCase()) && ws.some((w) => PREPOSITIONS.has(w.toLowerCase()))) return false;
  if (ws.some((w) => SUBJECT_STOP.has(bareWord(w)))) return false;
  const head = bareWord(ws.at(-1)!);
  if (GENERIC_HEADS.has(stem(head)) || GENERIC_HEADS.has(head)) return false;
  if (ws.length === 1 && DETERMINERS.has(head)) return false;
  return contentTermSet(subject).size > 0;
}

/** Cleans a question: collapses whitespace, drops bold/italic markers, capitalizes, ends with exactly one "?". */
export function finishQuestion(question: string): string {
  let q = question.replace(/\*\*|__/g, "").replace(/\s+/g, " ").trim();
  q = q.replace(/[\s.:;,!?]+$/, "");
  if (q.length === 0) return "";
  q = q[0]!.toUpperCase() + q.slice(1);
  return `${q}?`;
}

// A question may end with a preposition ("What is X used for?", "What does X refer to?"), never with these.
const DANGLING_END = new Set(["the", "a", "an", "and", "or", "that", "is", "are", "your", "its", "their", "our"]);

/**
 * A question a user could ask as is: ends with "?", 3+ words, balanced backticks, quotes and brackets, no dangling
 * last word ("…about the?") and no bare pronoun as its topic ("What is it?").
 */
export function isWellFormedQuestion(question: string): boolean {
  if (question.length < 10 || question.length > 300) return false;
  if (!question.endsWith("?") || question.indexOf("?") !== question.length - 1) return false;
  if (!/^[\p{Lu}"`]/u.test(question)) return false;
  const ws = words(question.slice(0, -1));
  if (ws.length < 3) return false;
  if ((question.match(/`/g) ?? []).length % 2 !== 0) return false;
  if ((question.match(/"/g) ?? []).length % 2 !== 0) return false;
  let depth = 0;
  for (const ch of question) {
    if (ch === "(" || ch === "[") depth++;
    if (ch === ")" || ch === "]") depth--;
    if (depth < 0) return false;
  }
  if (depth !== 0) return false;
  const last = bareWord(ws.at(-1)!);
  if (DANGLING_END.has(last)) return false;
  if (ws.length <= 4 && ws.slice(2).some((w) => PRONOUNS.has(bareWord(w)))) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------------------------------
// Candidates.

function candidate(question: string, span: TextSpan, kind: AnswerableKind, pattern: ExtractivePattern): Candidate {
  return { question: finishQuestion(question), start: span.start, end: span.end, kind, pattern, priority: PRIORITY[pattern] };
}

interface Candidate {
  question: string;
  start: number;
  end: number;
  kind: AnswerableKind;
  pattern: ExtractivePattern;
  priority: number;
}

const PRIORITY: Record<ExtractivePattern, number> = {
  definition: 10,
  "heading-question": 10,
  comparison: 9,
  quantity: 8,
  procedure: 8,
  purpose: 8,
  "code-subject": 7,
  "heading-procedure": 7,
  enumeration: 7,
  "heading-problem": 6,
  condition: 5,
  "heading-topic": 3,
};

interface Sentence extends TextSpan {
  text: string;
  block: number;
  /** Index among the sentences of its block. */
  index: number;
}

class ChunkView {
  readonly blocks: Block[];
  readonly sentences: Sentence[];
  /** Sentence index by start offset. */
  readonly sentenceAt = new Map<number, number>();
  readonly names: ReadonlySet<string>;
  constructor(
    readonly chunk: SourceChunk,
    readonly options: Required<ExtractiveOptions>,
  ) {
    this.blocks = segmentChunk(chunk.text, chunk.headingPath);
    this.sentences = this.blocks.flatMap((block, b) =>
      block.sentences.map((span, index) => ({ ...span, text: chunk.text.slice(span.start, span.end), block: b, index })),
    );
    this.sentences.forEach((s, i) => this.sentenceAt.set(s.start, i));
    this.names = namesIn(chunk.text);
  }

  /** An answer fit to be taught: long enough, not too long, a whole statement (not a list intro or a placeholder). */
  isUsableAnswer(start: number, end: number): boolean {
    if (end - start < this.options.minAnswerChars || end - start > this.options.maxAnswerChars) return false;
    const answer = this.chunk.text.slice(start, end);
    if (words(answer).length < 3) return false;
    if (/:\s*$/.test(answer) || /\[Image/i.test(answer)) return false;
    if ((answer.match(/`/g) ?? []).length % 2 !== 0) return false;
    if (/```|~~~/.test(answer)) return false;
    // A pointer elsewhere is no answer: "For more information, see …", "… the steps below.", "… the following figure."
    if (/^(?:For (?:more )?(?:information|details)|For an example|See |Following are|The following\b)/i.test(answer)) return false;
    if (/\b(?:below|as follows|the following(?:\s+[\w-]+)?)\W*$/i.test(answer)) return false;
    if (/\b(?:following|below) (?:figure|diagram|table|example|image|illustration|steps|procedure)\b/i.test(answer)) return false;
    if (/\bshown below\b/i.test(answer)) return false;
    return true;
  }
}

function definitionCandidates(view: ChunkView): Candidate[] {
  const out: Candidate[] = [];
  const verbs = [
    "is called", "are called", "is known as", "are known as", "is defined as", "are defined as", "is used to", "are used to",
    "is used for", "are used for", "refers to", "refer to", "stands for", "means", "is", "are",
  ];
  const pattern = new RegExp(`^(?<subj>.+?)\\s+(?<verb>${verbs.join("|")})\\s+(?<pred>.+)$`);
  for (const s of view.sentences) {
    const m = pattern.exec(s.text);
    if (m?.groups === undefined) continue;
    const { subj, verb, pred } = m.groups as { subj: string; verb: string; pred: string };
    if (!isGoodSubject(subj, verb === "means" ? 10 : 8)) continue;
    // "The request is a SOAP request", "The new version is …": a definite phrase of common words refers back to the
    // text around it; it defines nothing.
    if (/^The(?:\s+[\p{Ll}\d][\p{Ll}\d-]*){1,5}$/u.test(subj)) continue;
    if (words(pred).length < 2) continue;
    const topic = lowerInitial(subj, view.names);
    const plural = verb.startsWith("are") || verb === "refer to";
    let question: string;
    let kind: AnswerableKind = "conceptual";
    let pat: ExtractivePattern = "definition";
    switch (verb) {
      case "is":
      case "are":
        // "X is a/an/the …"; a plural may be defined by a bare plural: "Internal errors are errors that occur …".
        const determined = /^(?:a|an|the|one of the|any)\s/i.test(pred);
        const barePlural = verb === "are" && /^(?:[a-z-]+\s+)?[a-z-]+s\s+(?:that|which|who|whose|of|for|used|stored|with)\b/.test(pred);
        if (!determined && !barePlural) continue;
        if (/^the\s+(?:same|only|first|last|default|minimum|maximum|case|reason|result|one|other|following)\b/i.test(pred)) continue;
        question = `What ${verb} ${topic}`;
        break;
      case "means":
        question = `What does ${topic} mean`;
        break;
      case "refers to":
      case "refer to":
        question = `What ${plural ? "do" : "does"} ${topic} refer to`;
        break;
      case "stands for":
        question = `What does ${topic} stand for`;
        break;
      case "is defined as":
      case "are defined as":
        question = `How ${plural ? "are" : "is"} ${topic} defined`;
        break;
      case "is called":
      case "are called":
      case "is known as":
      case "are known as":
        question = `What ${plural ? "are" : "is"} ${topic} called`;
        kind = "factual";
        pat = "purpose";
        break;
      default:
        question = `What ${plural ? "are" : "is"} ${topic} used for`;
        kind = "factual";
        pat = "purpose";
    }
    out.push(candidate(question, s, kind, pat));
  }
  return out;
}

function codeSubjectCandidates(view: ChunkView): Candidate[] {
  const out: Candidate[] = [];
  for (const s of view.sentences) {
    const m = /^(`[^`]{2,80}`)\s+([a-z]{3,})s\s+\S/.exec(s.text);
    if (m === null) continue;
    const verb = `${m[2]}s`;
    if (AUXILIARIES.has(verb) || /(?:ss|us|is)$/.test(verb) || ["its", "this", "has", "was", "does"].includes(verb)) continue;
    out.push(candidate(`What does ${m[1]} do`, s, "factual", "code-subject"));
  }
  return out;
}

/** After the verb: a few words, a bound ("at most", "for"), a number, a unit or noun, the rest. */
const QUANTITY =
  /^(?<mid>(?:[a-z][\w-]*\s+){0,3}?)(?<prep>at most|up to|no more than|for up to|for|after|every)\s+(?<num>\d[\d,.]*)\s+(?<unit>[a-z][a-z-]*)(?<tail>.*)$/;
/** "… of clock skew" after the unit: what is counted. */
const OF_PHRASE = /^\s+of\s+((?:[a-z][\w-]*\s*){1,3}?)(?=[,.;]|\s+(?:when|if|in|on|for|per|to|and|from|at|with|before|after|because)\b|$)/;
const TIME_UNITS = /^(?:seconds?|minutes?|hours?|days?|weeks?|months?|years?|milliseconds?|ms)$/;

function quantityCandidates(view: ChunkView): Candidate[] {
  const out: Candidate[] = [];
  for (const s of view.sentences) {
    const ws = words(s.text);
    // The subject ends at the first verb form among the first seven words.
    let v = -1;
    for (let i = 1; i < Math.min(ws.length, 8); i++) {
      if (isVerbForm(bareWord(ws[i]!)) && /^[a-z]+$/.test(ws[i]!)) {
        v = i;
        break;
      }
    }
    if (v < 1) continue;
    const subject = ws.slice(0, v).join(" ");
    if (!isGoodSubject(subject, 6)) continue;
    let aux: string;
    let verb: string;
    let rest: string[];
    if (MODALS.has(ws[v]!) && ws[v] !== "cannot") {
      if (v + 1 >= ws.length || !/^[a-z]+$/.test(ws[v + 1]!)) continue;
      aux = ws[v]!;
      verb = ws[v + 1]!;
      rest = ws.slice(v + 2);
    } else {
      const w = ws[v]!;
      if (AUXILIARIES.has(w)) continue;
      verb = thirdPersonToBase(w);
      aux = w.endsWith("s") ? "does" : "do";
      rest = ws.slice(v + 1);
    }
    if (["be", "have", "do", "is", "are"].includes(verb)) continue;
    const restText = rest.join(" ");
    const q = QUANTITY.exec(restText);
    if (q?.groups === undefined) continue;
    const { mid, prep, unit, tail } = q.groups as { mid: string; prep: string; unit: string; tail: string };
    const midWords = words(mid);
    if (hasPronoun(mid) || /[`*]/.test(mid) || (midWords.length > 2 && midWords.some((w) => ["a", "an", "the"].includes(w)))) continue;
    const midText = mid.trim().length > 0 ? ` ${mid.trim()}` : "";
    const topic = lowerInitial(subject, view.names);
    const isTime = TIME_UNITS.test(unit);
    let question: string | undefined;
    if (prep === "at most" || prep === "up to" || prep === "no more than") {
      const of = OF_PHRASE.exec(tail);
      const ofText = of !== null && !hasPronoun(of[1]!) ? ` of ${of[1]!.trim()}` : "";
      const per = /^\s+(per\s+[a-z][\w-]*)/.exec(tail);
      const perText = of === null && per !== null ? ` ${per[1]}` : "";
      question = `How many ${unit}${ofText}${perText} ${aux} ${topic} ${verb}${midText}`;
    } else if (isTime && (prep === "for" || prep === "for up to")) {
      question = `How long ${aux} ${topic} ${verb}${midText}`;
    } else if (isTime && prep === "after") {
      question = `After how long ${aux} ${topic} ${verb}${midText}`;
    } else if (isTime && prep === "every") {
      question = `How often ${aux} ${topic} ${verb}${midText}`;
    }
    if (question === undefined) continue;
    out.push(candidate(question, s, "factual", "quantity"));
  }
  return out;
}

/** A clause that starts with an imperative ("retry the request", "reverse the entry") rather than a subject. */
/** Verbs documentation uses in instructions ("retry the request", "reverse the entry"), beside VERBS. */
const IMPERATIVE_VERBS = new Set(
  (
    "add ask attach avoid batch correct reverse release build choose configure consider contact copy decrease define " +
    "deploy detach edit ensure enter find grant increase insert install lower make migrate modify open page pass press " +
    "put raise remove rename replace restart restore review select set specify submit switch try turn unset upgrade"
  ).split(" "),
);

/** A clause that starts with an instruction ("retry the request", "reverse the entry") rather than a subject. */
function startsImperative(clause: string): boolean {
  const first = words(clause)[0] ?? "";
  return /^[a-z]+$/.test(first) && (VERBS.has(first) || IMPERATIVE_VERBS.has(first));
}

function procedureCandidates(view: ChunkView): Candidate[] {
  const out: Candidate[] = [];
  for (const s of view.sentences) {
    const m = /^To\s+(?<goal>[a-z][^,;:]{3,100}),\s+(?<main>.+)$/.exec(s.text);
    if (m?.groups === undefined) continue;
    const { goal, main } = m.groups as { goal: string; main: string };
    const goalWords = words(goal);
    if (goalWords.length < 2 || goalWords.length > 14 || hasPronoun(goal) || contentTermSet(goal).size < 2) continue;
    if (DETERMINERS.has(goalWords[0]!) || words(main).length < 3) continue;
    // "To learn more about X, see Y" points elsewhere; it does not say how.
    if (/^(?:learn|find out|read|see|get started|understand|know)\b/.test(goal) || /^(?:see|refer|visit|go to)\b/i.test(main)) continue;
    // The main clause gives the way: an instruction or "you can/must …" (a subject such as "Amazon S3 stores …" does not).
    const lead = words(main)[0] ?? "";
    const instruction = /^[a-z]+$/.test(lead) && !DETERMINERS.has(lead) && !PRONOUNS.has(lead) && !PREPOSITIONS.has(lead) &&
      !["there", "we", "you", "and", "or", "but", "so", "then", "also", "only", "not", "no", "both", "each", "every"].includes(lead);
    if (!instruction && !/^you\s+(?:can|must|should|need|have to)\b/.test(main)) continue;
    out.push(candidate(`How do you ${goal}`, s, "conceptual", "procedure"));
  }
  return out;
}

function conditionCandidates(view: ChunkView): Candidate[] {
  const out: Candidate[] = [];
  for (const s of view.sentences) {
    const m = /^(?<conj>If|When|Whenever)\s+(?<cond>[^,;:]{3,140}),\s+(?:then\s+)?(?<main>.+)$/.exec(s.text);
    if (m?.groups === undefined) continue;
    const { conj, cond, main } = m.groups as { conj: string; cond: string; main: string };
    const condWords = words(cond);
    if (condWords.length < 2 || condWords.length > 18 || hasPronoun(cond) || contentTermSet(cond).size < 2) continue;
    // "When designing an application, …" has no condition to ask about; a dash or bracket means the clause goes on.
    if (/ing$/.test(condWords[0]!) || /[—–()[\]]/.test(cond)) continue;
    if (words(main).length < 3 || /^(?:see|and|or|but|so|for example|e\.g\.)\b/i.test(main)) continue;
    const c = `${conj.toLowerCase()} ${cond}`;
    let question: string;
    if (/^we recommend\b/i.test(main)) question = `What is recommended ${c}`;
    else if (/^note\b/.test(main)) question = `What should you know ${c}`;
    else if (startsImperative(main)) question = `What should you do ${c}`;
    else question = `What happens ${c}`;
    out.push(candidate(question, s, "factual", "condition"));
  }
  return out;
}

/** "A minor release", "the major release": determiner, modifier and head noun at the start of a clause. */
function modifiedNoun(clause: string): { phrase: string; modifier: string; head: string } | undefined {
  const m = /^((?:(?:a|an|the)\s+)?([\p{L}][\p{L}\d-]*)\s+([\p{L}][\p{L}\d-]*))\s+(\S+)/iu.exec(clause.trim());
  if (m === null) return undefined;
  // The phrase must be the whole subject: a verb follows it ("a minor release adds", "the REST API returns").
  const next = m[4]!;
  if (!/^\p{Ll}+$/u.test(next)) return undefined;
  const verbLike = isVerbForm(next) || IMPERATIVE_VERBS.has(thirdPersonToBase(next)) || (next.endsWith("s") && !next.endsWith("ss"));
  if (!verbLike) return undefined;
  const modifier = m[2]!.toLowerCase();
  const head = m[3]!.toLowerCase();
  if (isStopish(modifier) || isStopish(head) || isVerbForm(head) || GENERIC_HEADS.has(stem(head))) return undefined;
  if (/ing$/.test(modifier) || /ing$/.test(head) || PREPOSITIONS.has(modifier) || PREPOSITIONS.has(head)) return undefined;
  return { phrase: m[1]!, modifier, head: stem(head) };
}

/** "AWS Identity and Access Management (IAM)" and "IAM": one names the other, nothing to compare. */
function sameThing(a: string, b: string): boolean {
  const x = a.toLowerCase().replace(/^(?:a|an|the)\s+/, "");
  const y = b.toLowerCase().replace(/^(?:a|an|the)\s+/, "");
  return x.includes(y) || y.includes(x);
}

function isStopish(word: string): boolean {
  return BAD_SUBJECT_START.has(word) || SUBJECT_STOP.has(word) || DETERMINERS.has(word) || AUXILIARIES.has(word);
}

function comparisonCandidates(view: ChunkView, definitions: readonly Candidate[]): Candidate[] {
  const out: Candidate[] = [];
  const ask = (a: string, b: string, start: number, end: number): void => {
    if (sameThing(a, b)) return;
    const question = finishQuestion(`What is the difference between ${lowerInitial(a, view.names)} and ${lowerInitial(b, view.names)}`);
    out.push({ question, start, end, kind: "comparison", pattern: "comparison", priority: PRIORITY.comparison });
  };
  // One sentence, two clauses with contrasting subjects: "A minor release …; a major release …".
  for (const s of view.sentences) {
    const parts = s.text.split(/;\s+|,\s+(?:whereas|while|but)\s+|\s+whereas\s+/);
    if (parts.length < 2) continue;
    const first = modifiedNoun(parts[0]!);
    const second = modifiedNoun(parts[1]!);
    if (first !== undefined && second !== undefined && first.head === second.head && first.modifier !== second.modifier) {
      ask(first.phrase, second.phrase.replace(/^(a|an|the)\b/i, (d) => d.toLowerCase()), s.start, s.end);
    }
  }
  // Adjacent sentences of one block with contrasting subjects.
  for (let i = 0; i + 1 < view.sentences.length; i++) {
    const a = view.sentences[i]!;
    const b = view.sentences[i + 1]!;
    if (a.block !== b.block || view.blocks[a.block]!.kind !== "prose") continue;
    if (words(a.text).length < 5 || words(b.text).length < 5) continue;
    const first = modifiedNoun(a.text);
    const second = modifiedNoun(b.text);
    if (first !== undefined && second !== undefined && first.head === second.head && first.modifier !== second.modifier) {
      ask(first.phrase, second.phrase, a.start, b.end);
    }
  }
  // Two definitions close together (at most one sentence between them) in one block.
  const defs = definitions.filter((d) => d.pattern === "definition");
  for (let i = 0; i + 1 < defs.length; i++) {
    const a = defs[i]!;
    const b = defs[i + 1]!;
    const ia = view.sentenceAt.get(a.start) ?? -1;
    const ib = view.sentenceAt.get(b.start) ?? -1;
    if (ia < 0 || ib < 0 || ib - ia > 2 || view.sentences[ia]!.block !== view.sentences[ib]!.block) continue;
    const subjectA = /^What (?:is|are) (.+)\?$/.exec(a.question)?.[1];
    const subjectB = /^What (?:is|are) (.+)\?$/.exec(b.question)?.[1];
    if (subjectA === undefined || subjectB === undefined || sameThing(subjectA, subjectB)) continue;
    out.push({
      question: finishQuestion(`What is the difference between ${subjectA} and ${subjectB}`),
      start: a.start,
      end: b.end,
      kind: "comparison",
      pattern: "comparison",
      priority: PRIORITY.comparison,
    });
  }
  return out;
}

/** Headings of link lists and tables of contents: nothing to ask about. */
const LIST_INTRO_SKIP =
  /^(?:topics|related (?:resources|topics|information|services)|see also|contents|in this section|next steps?|more info(?:rmation)?|examples?|resources|learn more)$/i;

/**
 * "Amazon S3 standard storage offers the following features" → "Which features does Amazon S3 standard storage offer";
 * "You have the following options when deleting an object" → "Which options do you have when deleting an object".
 */
function followingQuestion(pre: string, rest: string, names: ReadonlySet<string>): string | undefined {
  const preWords = words(pre);
  const verbWord = preWords.at(-1) ?? "";
  const modal = preWords.length >= 3 && MODALS.has(preWords.at(-2)!) ? preWords.at(-2)! : undefined;
  const subject = preWords.slice(0, modal !== undefined ? -2 : -1).join(" ");
  if (!/^[a-z]+$/.test(verbWord) || (AUXILIARIES.has(verbWord) && verbWord !== "has" && verbWord !== "have")) return undefined;
  if (subject !== "You" && !isGoodSubject(subject, 8)) return undefined;
  const restWords = words(rest);
  const npEnd = restWords.findIndex((w) => /^(?:to|for|when|in|on|of|with|that|if|before|after|from|about|by|while)$/.test(w));
  const np = restWords.slice(0, npEnd < 0 ? restWords.length : npEnd).join(" ");
  const tail = npEnd < 0 ? "" : ` ${restWords.slice(npEnd).join(" ")}`;
  if (np.length === 0 || words(np).length > 4 || hasPronoun(tail) || hasPronoun(np)) return undefined;
  const who = subject === "You" ? "you" : lowerInitial(subject, names);
  const aux = modal ?? (subject === "You" || !verbWord.endsWith("s") ? "do" : "does");
  const verb = modal !== undefined ? verbWord : thirdPersonToBase(verbWord);
  return `Which ${np} ${aux} ${who} ${verb}${tail}`;
}

function enumerationCandidates(view: ChunkView, headingQuestionSection: string | undefined): Candidate[] {
  const out: Candidate[] = [];
  const text = view.chunk.text;
  let firstList = true;
  view.blocks.forEach((block, b) => {
    if (block.kind !== "list") return;
    const isFirstList = firstList;
    firstList = false;
    if (block.items.length < 2) return;
    const start = block.items[0]!.start;
    const end = block.items.at(-1)!.end;
    const previous = view.blocks[b - 1];
    if (previous?.kind === "heading" && LIST_INTRO_SKIP.test(text.slice(previous.start, previous.end).trim())) return;
    let question: string | undefined;
    const intro = previous?.kind === "prose" ? previous.sentences.at(-1) : undefined;
    const introText = intro !== undefined ? text.slice(intro.start, intro.end) : "";
    if (introText.endsWith(":")) {
      const body = introText.slice(0, -1).trim();
      const following = /^The following\s+(.+)$/.exec(body);
      if (following !== null && words(following[1]!).length >= 3 && !hasPronoun(following[1]!)) {
        question = `Which ${following[1]}`;
      } else {
        const m = /^(?<pre>.+?)\s+the following\s+(?<rest>.+)$/.exec(body);
        if (m?.groups !== undefined) question = followingQuestion(m.groups.pre!, m.groups.rest!, view.names);
      }
    }
    // Without an intro to turn around, ask for the list of the section when it directly follows the heading or an
    // intro sentence (not "For more information, see:"), and only for the section's first list.
    const introduced = previous?.kind === "heading" || (introText.endsWith(":") && !/\b(?:see|information|more)\b/i.test(introText));
    if (question === undefined && headingQuestionSection !== undefined && introduced && isFirstList) {
      question = `Which points does the section "${headingQuestionSection.replace(/"/g, "'")}" list`;
    }
    if (question === undefined) return;
    out.push({ question: finishQuestion(question), start, end, kind: "factual", pattern: "enumeration", priority: PRIORITY.enumeration });
  });
  return out;
}

/** The first statement after the chunk's heading: one sentence, extended by the next while shorter than `atLeast`. */
function firstExplanation(view: ChunkView, atLeast: number, sentences = 1): TextSpan | undefined {
  const firstBody = view.blocks.findIndex((b, i) => i > 0 && b.kind !== "heading");
  if (firstBody < 0) return undefined;
  const block = view.blocks[firstBody]!;
  if (block.kind !== "prose") return undefined;
  const spans = block.sentences;
  if (spans.length === 0) return undefined;
  let i = 0;
  let span: TextSpan = { ...spans[0]! };
  while (i + 1 < spans.length && (span.end - span.start < atLeast || i + 1 < sentences)) {
    const next = spans[i + 1]!;
    if (view.chunk.text.slice(next.start, next.end).endsWith(":")) break;
    if (next.end - span.start > view.options.maxAnswerChars) break;
    span = { start: span.start, end: next.end };
    i++;
  }
  return view.isUsableAnswer(span.start, span.end) ? span : undefined;
}

/** A heading of a document section about problems: "Troubleshooting", "Startup problems", "Common errors". */
const PROBLEM_SECTION = /troubleshoot|problems?\b|errors?\b|issues?\b|faq\b|known issues/i;

function headingCandidates(view: ChunkView): { candidates: Candidate[]; section: string | undefined } {
  const { chunk } = view;
  const heading = chunk.headingPath.at(-1)?.trim();
  // Only the chunk that opens its section starts with the heading; a continuation chunk does not explain it.
  if (heading === undefined || heading.length === 0 || view.blocks[0]?.kind !== "heading") return { candidates: [], section: undefined };
  const firstLine = chunk.text.slice(view.blocks[0].start, view.blocks[0].end).trim();
  if (firstLine !== heading) return { candidates: [], section: undefined };
  const out: Candidate[] = [];
  const add = (question: string, span: TextSpan | undefined, kind: AnswerableKind, pattern: ExtractivePattern): void => {
    if (span !== undefined) out.push(candidate(question, span, kind, pattern));
  };
  const clean = heading.replace(/\*\*|__/g, "");
  const ws = words(clean);
  const parent = chunk.headingPath.at(-2);
  const base = gerundToBase(ws[0] ?? "");
  const nominal = NOMINAL_GERUNDS.has((ws[0] ?? "").toLowerCase()) || NOMINAL_HEADS.has((ws[1] ?? "").toLowerCase());
  const isGerundPhrase = base !== undefined && /^\p{Lu}/u.test(ws[0]!) && ws.length >= 2 && !nominal;
  if (LIST_INTRO_SKIP.test(clean)) return { candidates: [], section: undefined };

  if (clean.endsWith("?") && ws.length >= 3) {
    add(clean, firstExplanation(view, 40, 2), "factual", "heading-question");
    return { candidates: out, section: heading };
  }
  const howTo = /^How to\s+(.+)$/i.exec(clean);
  if (howTo !== null && words(howTo[1]!).length >= 1) {
    add(`How do you ${howTo[1]}`, firstExplanation(view, 40), "conceptual", "heading-procedure");
    return { candidates: out, section: heading };
  }
  // A problem under "Troubleshooting" / "Startup problems": 'The server exits with "…"', "rate_limited".
  const isProblem = parent !== undefined && PROBLEM_SECTION.test(parent) && !PROBLEM_SECTION.test(clean);
  if (isProblem && !isGerundPhrase && (ws.length >= 2 || /_/.test(clean))) {
    const quoted = clean.replace(/"/g, "'");
    const question =
      ws.length >= 3 && /^\p{Lu}/u.test(clean) && !/_/.test(ws[0]!)
        ? `What should you do when ${lowerInitial(clean, view.names)}`
        : `What should you do about "${quoted}"`;
    add(question, firstExplanation(view, 60, 2), "factual", "heading-problem");
    return { candidates: out, section: heading };
  }
  if (isGerundPhrase) {
    add(`How do you ${base} ${ws.slice(1).join(" ")}`, firstExplanation(view, 40), "conceptual", "heading-procedure");
  }
  const explanation = firstExplanation(view, 40);
  if (explanation !== undefined) {
    const title = clean.replace(/"/g, "'");
    const where = chunk.headingPath.length >= 2 ? `the section "${title}"` : `the introduction of "${title}"`;
    const topic = subjectOf(chunk.text.slice(explanation.start, explanation.end), view.names);
    const about = topic !== undefined && topic.toLowerCase() !== clean.toLowerCase() ? ` about ${topic}` : "";
    add(`What does ${where} say${about}`, explanation, "conceptual", "heading-topic");
  }
  return { candidates: out, section: heading };
}

/** The subject of a sentence when it is a plain noun phrase followed by a verb ("List endpoints return …"). */
function subjectOf(sentence: string, names: ReadonlySet<string>): string | undefined {
  const ws = words(sentence);
  for (let i = 1; i < Math.min(ws.length, 7); i++) {
    if (/^[a-z]+$/.test(ws[i]!) && isVerbForm(ws[i]!)) {
      const subject = ws.slice(0, i).join(" ");
      return isGoodSubject(subject, 5) ? lowerInitial(subject, names) : undefined;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------------
// Selection.

function normalizeQuestion(question: string): string {
  return question.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, " ").trim();
}

function hashUnit(...parts: (string | number)[]): number {
  return createHash("sha256").update(parts.join("\u0000")).digest().readUInt32BE(0) / 2 ** 32;
}

/** The content-addressed ID of an example: the same chunk, question and answer give the same ID. */
export function extractiveExampleId(chunkId: string, question: string, answer: string): string {
  return `ex_${createHash("sha256").update(`extractive-v1\u0000${chunkId}\u0000${question}\u0000${answer}`).digest("hex").slice(0, 32)}`;
}

function resolveOptions(options: ExtractiveOptions): Required<ExtractiveOptions> {
  const resolved = { ...EXTRACTIVE_DEFAULTS, ...stripUndefined(options) };
  const { questionsPerChunk, minAnswerChars, maxAnswerChars, seed } = resolved;
  if (!Number.isInteger(questionsPerChunk) || questionsPerChunk < 1 || questionsPerChunk > 20) {
    throw new RangeError(`questionsPerChunk must be an integer from 1 to 20, got ${questionsPerChunk}`);
  }
  if (!Number.isInteger(minAnswerChars) || minAnswerChars < 1) {
    throw new RangeError(`minAnswerChars must be a positive integer, got ${minAnswerChars}`);
  }
  if (!Number.isInteger(maxAnswerChars) || maxAnswerChars < minAnswerChars) {
    throw new RangeError(`maxAnswerChars must be an integer ≥ minAnswerChars (${minAnswerChars}), got ${maxAnswerChars}`);
  }
  if (!Number.isInteger(seed)) throw new RangeError(`seed must be an integer, got ${seed}`);
  return resolved;
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * Up to `questionsPerChunk` extractive examples of one chunk. Candidates from every pattern are filtered (well-formed
 * question, usable verbatim answer not contained in the question, no repeated question) and picked greedily by
 * priority; a pick lowers the priority of candidates of the same pattern and of candidates whose answer overlaps its
 * answer, so the questions of a chunk ask about different things. Ties are broken by a hash of the seed.
 */
export function generateExtractiveExamples(chunk: SourceChunk, options: ExtractiveOptions = {}): ExtractiveExample[] {
  const resolved = resolveOptions(options);
  const view = new ChunkView(chunk, resolved);
  const definitions = definitionCandidates(view);
  const heading = headingCandidates(view);
  const candidates = [
    ...heading.candidates,
    ...definitions,
    ...comparisonCandidates(view, definitions),
    ...codeSubjectCandidates(view),
    ...quantityCandidates(view),
    ...procedureCandidates(view),
    ...conditionCandidates(view),
    ...enumerationCandidates(view, heading.section),
  ];

  const seen = new Set<string>();
  const pool: (Candidate & { score: number })[] = [];
  for (const c of candidates) {
    const answer = chunk.text.slice(c.start, c.end);
    const key = normalizeQuestion(c.question);
    if (seen.has(key) || !isWellFormedQuestion(c.question) || !view.isUsableAnswer(c.start, c.end)) continue;
    if (normalizeQuestion(answer).includes(key) || key.includes(normalizeQuestion(answer))) continue;
    seen.add(key);
    pool.push({ ...c, score: c.priority + hashUnit(resolved.seed, chunk.id, c.question) });
  }

  const picked: (Candidate & { score: number })[] = [];
  while (picked.length < resolved.questionsPerChunk && pool.length > 0) {
    let best = 0;
    const adjusted = (c: Candidate & { score: number }): number => {
      let score = c.score;
      for (const p of picked) {
        if (p.pattern === c.pattern) score -= 3;
        if (c.start < p.end && p.start < c.end) score -= 4;
      }
      return score;
    };
    for (let i = 1; i < pool.length; i++) if (adjusted(pool[i]!) > adjusted(pool[best]!)) best = i;
    const pick = pool.splice(best, 1)[0]!;
    picked.push(pick);
    // Two questions with one and the same answer teach little more than one: keep the better one.
    for (let i = pool.length - 1; i >= 0; i--) if (pool[i]!.start === pick.start && pool[i]!.end === pick.end) pool.splice(i, 1);
  }

  return picked.map((c) => {
    const answer = chunk.text.slice(c.start, c.end);
    return {
      id: extractiveExampleId(chunk.id, c.question, answer),
      chunkId: chunk.id,
      documentId: chunk.documentId,
      headingPath: [...chunk.headingPath],
      context: chunk.text,
      question: c.question,
      answer,
      kind: c.kind,
      answerable: true,
      generator: "extractive",
      pattern: c.pattern,
      answerStart: c.start,
    };
  });
}

/** The extractive examples of many chunks, in chunk order. */
export function generateExtractiveDataset(chunks: readonly SourceChunk[], options: ExtractiveOptions = {}): ExtractiveExample[] {
  resolveOptions(options);
  return chunks.flatMap((chunk) => generateExtractiveExamples(chunk, options));
}
