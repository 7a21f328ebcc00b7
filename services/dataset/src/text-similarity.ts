/**
 * Lexical similarity for dataset generation: content-word tokens and answer coverage (how much of an answer's content
 * a text still holds). Retrieval (hard-negative distractors) is libs/retrieval's, the gateway's own.
 * Pure and deterministic; no dependency beyond the standard library.
 */

/** English function words and question words; they carry no topic, so neither retrieval nor coverage counts them. */
const STOPWORDS = new Set(
  (
    "a about above after again against all also am an and any are aren't as at be because been before being below " +
    "between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each " +
    "either else etc even ever every few for from further had hadn't has hasn't have haven't having he her here hers " +
    "herself him himself his how however i if in into is isn't it it's its itself just least less let like many may " +
    "me might more most much must mustn't my myself neither no nor not now of off often on once one only or other " +
    "others otherwise our ours ourselves out over own per rather same shall she should shouldn't since so some such " +
    "than that that's the their theirs them themselves then there there's these they they're this those though " +
    "through thus to too under until up upon us very via was wasn't we we're were weren't what what's when where " +
    "whether which while who whom whose why will with within without won't would wouldn't yet you you're your yours " +
    "yourself yourselves"
  ).split(" "),
);

/** True for words retrieval and coverage ignore (function words, question words). */
export function isStopword(word: string): boolean {
  return STOPWORDS.has(word.toLowerCase());
}

// Versions and decimals ("3.2.1", "19.99"), contractions and possessives ("don't", "bucket's"), then plain words.
const WORD = /\d+(?:\.\d+)+|\p{L}+'\p{L}+|[\p{L}\p{N}_]+/gu;

/**
 * Lowercased word tokens of a text. Thousands separators are dropped (`2,000` → `2000`), decimals and dotted versions
 * stay one token (`19.99`, `3.2.1`), snake_case stays one token, and everything else (hyphens, slashes, colons,
 * Markdown) separates tokens.
 */
export function wordTokens(text: string): string[] {
  return text.replace(/(\d),(?=\d{3}\b)/g, "$1").toLowerCase().match(WORD) ?? [];
}

/**
 * A light, predictable stemmer: folds plurals and possessives (`entries` → `entry`, `buckets` → `bucket`,
 * `classes` → `class`) and leaves everything else alone. Enough for "does this text hold the answer's words".
 */
export function stem(word: string): string {
  let w = word.toLowerCase();
  if (w.endsWith("'s")) w = w.slice(0, -2);
  const n = w.length;
  if (n <= 3 || w.charCodeAt(n - 1) !== 115 /* s */ || /\d/.test(w)) return w;
  if (w.endsWith("ies") && n > 4) return `${w.slice(0, -3)}y`;
  if (w.endsWith("sses") || w.endsWith("shes") || w.endsWith("ches") || w.endsWith("xes") || w.endsWith("zes")) return w.slice(0, -2);
  if (w.endsWith("ss") || w.endsWith("us") || w.endsWith("is")) return w;
  return w.slice(0, -1);
}

/** Stemmed content words of a text, in order, repeats kept (the token stream BM25 indexes). */
export function contentTerms(text: string): string[] {
  const out: string[] = [];
  for (const token of wordTokens(text)) {
    if (STOPWORDS.has(token)) continue;
    // Single letters and lone digits carry nothing but noise ("a", list numbers "1", "2").
    if (token.length === 1) continue;
    out.push(stem(token));
  }
  return out;
}

/** The distinct stemmed content words of a text. */
export function contentTermSet(text: string): Set<string> {
  return new Set(contentTerms(text));
}

/**
 * The share (0..1) of the answer's distinct content words that occur in `text`. 1 when the text holds every content
 * word of the answer; 0 for an answer without content words (nothing of it can be found).
 */
export function answerCoverage(answer: string, text: string | ReadonlySet<string>): number {
  const wanted = contentTermSet(answer);
  if (wanted.size === 0) return 0;
  const have = typeof text === "string" ? contentTermSet(text) : text;
  let found = 0;
  for (const term of wanted) if (have.has(term)) found++;
  return found / wanted.size;
}

/** Whitespace-collapsed, lowercased text, for "does A contain B verbatim" checks that ignore line wrapping and case. */
export function normalizeForContainment(text: string): string {
  return text.replace(/\s+/g, " ").trim().toLowerCase();
}
