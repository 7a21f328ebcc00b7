import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

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

/**
 * The folder of each tokenizer.json, under `tokenizers/` beside this module (vendored data: where each file comes
 * from and its licence are in tokenizers/README.md; `npm run build` copies the folder into dist/).
 */
const TOKENIZER_DIRS: Record<TokenizerName, string> = {
  mistral: "mistral", // Mistral-7B-v0.1's 32,000-token SentencePiece BPE
  llama3: "llama3", // Meta-Llama-3-8B's 128,256-token byte-level BPE
  qwen3: "qwen3", // Qwen3's 151,669-token byte-level BPE
};

/** Absolute path of the tokenizer.json for `name`. */
export function tokenizerFile(name: TokenizerName): string {
  const dir = Object.hasOwn(TOKENIZER_DIRS, name) ? TOKENIZER_DIRS[name] : undefined;
  if (dir === undefined) {
    throw new Error(`unknown tokenizer "${String(name)}": expected one of ${TOKENIZER_NAMES.join(", ")}`);
  }
  return fileURLToPath(new URL(`./tokenizers/${dir}/tokenizer.json`, import.meta.url));
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
   * Merges token ids the way the reference does (Hugging Face tokenizers' `Word::merge_all`) and returns how many
   * tokens remain. Ids of -1 (byte fallback) take part in no merge.
   *
   * The symbols form a doubly linked list over their first positions, and every mergeable neighbour pair waits in a
   * min-heap ordered by (merge rank, position): the lowest rank first, the leftmost on ties. A popped entry whose
   * left symbol is gone, has no right neighbour, or whose pair no longer merges into the entry's token is stale and
   * skipped (exactly the reference's test); a merge pushes the two pairs it creates. Each merge costs O(log n), so a
   * word of n symbols costs O(n log n), where rescanning for the best pair after every merge cost O(n²).
   */
  merge(ids: readonly number[]): number {
    const n = ids.length;
    if (n < 2) return n;
    const work = this.workspace(n);
    const { symbols, next, prev, gone } = work;
    const pairs = this.pairs;
    const heap = work.heap;
    heap.clear();
    for (let i = 0; i < n; i++) {
      symbols[i] = ids[i]!;
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
      gone[i] = 0;
    }
    for (let i = 0; i + 1 < n; i++) {
      const slot = pairs.find(symbols[i]!, symbols[i + 1]!);
      if (slot >= 0) heap.push(pairs.rankAt(slot), i, pairs.mergedAt(slot));
    }
    let length = n;
    while (heap.size > 0) {
      const pos = heap.topPosition();
      const mergedId = heap.topValue();
      heap.pop();
      if (gone[pos] === 1) continue;
      const right = next[pos]!;
      if (right < 0) continue;
      const slot = pairs.find(symbols[pos]!, symbols[right]!);
      if (slot < 0 || pairs.mergedAt(slot) !== mergedId) continue;
      symbols[pos] = mergedId;
      gone[right] = 1;
      const after = next[right]!;
      next[pos] = after;
      if (after >= 0) prev[after] = pos;
      length--;
      const before = prev[pos]!;
      if (before >= 0) {
        const left = pairs.find(symbols[before]!, mergedId);
        if (left >= 0) heap.push(pairs.rankAt(left), before, pairs.mergedAt(left));
      }
      if (after >= 0) {
        const onRight = pairs.find(mergedId, symbols[after]!);
        if (onRight >= 0) heap.push(pairs.rankAt(onRight), pos, pairs.mergedAt(onRight));
      }
    }
    return length;
  }

  /** Arrays reused between calls (a counter is single-threaded), grown to the longest word seen. */
  private workspace(n: number) {
    if (this.work.symbols.length < n) {
      const size = Math.max(n, this.work.symbols.length * 2);
      this.work = {
        symbols: new Int32Array(size),
        next: new Int32Array(size),
        prev: new Int32Array(size),
        gone: new Uint8Array(size),
        heap: this.work.heap,
      };
    }
    return this.work;
  }

  private work = {
    symbols: new Int32Array(64),
    next: new Int32Array(64),
    prev: new Int32Array(64),
    gone: new Uint8Array(64),
    heap: new MergeHeap(),
  };
}

/**
 * A binary min-heap of merge candidates keyed by (rank, position), each carrying the merged token id. Keys pack
 * rank · 2³² + position into one double (exact: ranks stay far below 2²¹), so comparing two entries is one `<`.
 */
class MergeHeap {
  private keys = new Float64Array(256);
  private values = new Int32Array(256);
  size = 0;

  clear(): void {
    this.size = 0;
  }

  push(rank: number, position: number, value: number): void {
    if (this.size === this.keys.length) {
      const keys = new Float64Array(this.size * 2);
      keys.set(this.keys);
      const values = new Int32Array(this.size * 2);
      values.set(this.values);
      this.keys = keys;
      this.values = values;
    }
    const keys = this.keys;
    const values = this.values;
    const key = rank * POSITION_SPAN + position;
    let i = this.size++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (keys[parent]! <= key) break;
      keys[i] = keys[parent]!;
      values[i] = values[parent]!;
      i = parent;
    }
    keys[i] = key;
    values[i] = value;
  }

  topPosition(): number {
    return this.keys[0]! % POSITION_SPAN;
  }

  topValue(): number {
    return this.values[0]!;
  }

  pop(): void {
    const keys = this.keys;
    const values = this.values;
    const last = --this.size;
    if (last === 0) return;
    const key = keys[last]!;
    const value = values[last]!;
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= last) break;
      if (child + 1 < last && keys[child + 1]! < keys[child]!) child++;
      if (keys[child]! >= key) break;
      keys[i] = keys[child]!;
      values[i] = values[child]!;
      i = child;
    }
    keys[i] = key;
    values[i] = value;
  }
}

const POSITION_SPAN = 2 ** 32;

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

  /** The slot of the merge of (a, b), or -1 when the pair does not merge (byte-fallback ids never do). */
  find(a: number, b: number): number {
    if (a < 0 || b < 0) return -1;
    const h = this.slot(a, b);
    return this.lefts[h] === -1 ? -1 : h;
  }

  rankAt(slot: number): number {
    return this.ranks[slot]!;
  }

  mergedAt(slot: number): number {
    return this.mergedIds[slot]!;
  }
}

/** Splits text around added tokens (matched in the raw text, as the reference does). */
function addedTokenPattern(tokens: TokenizerJson["added_tokens"]): RegExp | undefined {
  const contents = tokens.map((t) => t.content).filter((c) => c.length > 0);
  if (contents.length === 0) return undefined;
  contents.sort((a, b) => b.length - a.length);
  return new RegExp(contents.map((c) => c.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|"), "g");
}

/**
 * Pieces longer than this are not memoized: a long piece (a minified line, a base64 blob) rarely repeats, and keeping
 * it would hold megabytes for nothing (the reference's cache skips long words too).
 */
const MEMO_MAX_PIECE = 256;
/** The memo starts over past this many pieces, so a long-lived counter's memory stays bounded. */
const MEMO_MAX_ENTRIES = 1 << 20;

abstract class PieceCounter implements TokenCounter {
  private readonly memo = new Map<string, number>();

  protected recall(piece: string): number | undefined {
    return this.memo.get(piece);
  }

  protected remember(piece: string, count: number): void {
    if (piece.length > MEMO_MAX_PIECE) return;
    if (this.memo.size >= MEMO_MAX_ENTRIES) this.memo.clear();
    this.memo.set(piece, count);
  }

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
    const hit = this.recall(piece);
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
    this.remember(piece, n);
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
    const hit = this.recall(piece);
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
    this.remember(piece, n);
    return n;
  }
}
