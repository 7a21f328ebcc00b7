/**
 * Near-duplicate detection: word shingles, MinHash signatures and an LSH index whose candidates are verified by the
 * exact Jaccard similarity of the shingle sets, so a reported pair is always at or above the threshold (up to 32-bit
 * shingle-hash collisions, about one in four billion per shingle pair).
 *
 * Everything is 32-bit (Math.imul, typed arrays) and seeded: the same texts and seed give the same signatures, buckets
 * and matches on every run and machine.
 */

export interface MinHashOptions {
  /** Jaccard similarity from which two texts are near duplicates, 0 < t ≤ 1. Default 0.8. */
  threshold?: number;
  /** Hash functions per signature. Default 128. */
  numPerm?: number;
  /** Words per shingle. Default 5; a text with fewer words is one shingle of all its words. */
  shingleSize?: number;
  /** Seed of the hash functions. Default 42. */
  seed?: number;
  /** LSH banding; default: chosen from threshold and numPerm by lshParams. */
  bands?: number;
  rows?: number;
}

export interface LshParams {
  bands: number;
  rows: number;
}

export const DEFAULT_MINHASH = { threshold: 0.8, numPerm: 128, shingleSize: 5, seed: 42 } as const;

/** An indexed item at or above the threshold and its exact shingle Jaccard similarity with the query. */
export interface Match {
  item: number;
  similarity: number;
}

/** A text reduced to what near-duplicate detection needs. */
export interface Fingerprint {
  /** Sorted, distinct 32-bit shingle hashes. */
  shingles: Uint32Array;
  /** numPerm minimum hash values (see MinHasher.signature). */
  signature: Int32Array;
}

const WORD = /\p{sc=Han}|\p{sc=Hiragana}|\p{sc=Katakana}|[\p{L}\p{N}\p{M}]+/gu;

/**
 * The words of a text as every check of the dataset service compares them: Unicode NFKC, lower case, runs of letters,
 * digits and marks (punctuation, symbols and whitespace separate words and are dropped); Chinese and Japanese characters
 * are one word each, since those scripts do not separate words with spaces.
 */
export function normalizedWords(text: string): string[] {
  // ASCII text (the common case) is its own NFKC form and its words are [a-z0-9] runs: a cheaper regex, same result.
  if (ASCII.test(text)) return text.toLowerCase().match(ASCII_WORD) ?? [];
  return text.normalize("NFKC").toLowerCase().match(WORD) ?? [];
}

const ASCII = /^[\x00-\x7f]*$/;
const ASCII_WORD = /[a-z0-9]+/g;

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** FNV-1a over UTF-16 code units (its basis xor `seed`), finished with fmix32: a fast, well-mixed 32-bit hash. */
export function hash32(text: string, seed = 0): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return fmix32(h);
}

function hashWord(word: string): number {
  return hash32(word);
}

/** Sorted distinct hashes of the word k-grams of a text (one shingle of all words when it has fewer than k). */
export function shingleSet(text: string, shingleSize: number = DEFAULT_MINHASH.shingleSize): Uint32Array {
  const words = normalizedWords(text);
  if (words.length === 0) return new Uint32Array(0);
  const k = Math.min(shingleSize, words.length);
  const wordHashes = new Uint32Array(words.length);
  for (let i = 0; i < words.length; i++) wordHashes[i] = hashWord(words[i]!);
  const count = words.length - k + 1;
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    let h = k;
    for (let j = 0; j < k; j++) h = Math.imul((h << 5) | (h >>> 27), 0x9e3779b1) ^ wordHashes[i + j]!;
    out[i] = fmix32(h);
  }
  out.sort();
  let n = 0;
  for (let i = 0; i < out.length; i++) if (i === 0 || out[i] !== out[i - 1]) out[n++] = out[i]!;
  return out.subarray(0, n);
}

/** Jaccard similarity of two sorted distinct sets; 0 when both are empty. */
export function jaccard(a: Uint32Array, b: Uint32Array): number {
  if (a.length === 0 && b.length === 0) return 0;
  let i = 0;
  let j = 0;
  let common = 0;
  while (i < a.length && j < b.length) {
    const x = a[i]!;
    const y = b[j]!;
    if (x === y) {
      common++;
      i++;
      j++;
    } else if (x < y) i++;
    else j++;
  }
  return common / (a.length + b.length - common);
}

/** splitmix32: the per-permutation salts from one seed. */
function salts(seed: number, n: number): Uint32Array {
  const out = new Uint32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s + 0x9e3779b9) >>> 0;
    out[i] = fmix32(s);
  }
  return out;
}

/** MinHash signatures with numPerm seeded hash functions h_p(x) = fmix32(x ^ salt_p) (murmur3's finalizer). */
export class MinHasher {
  readonly numPerm: number;
  private readonly salts: Uint32Array;

  constructor(numPerm: number = DEFAULT_MINHASH.numPerm, seed: number = DEFAULT_MINHASH.seed) {
    if (!Number.isInteger(numPerm) || numPerm < 1) throw new RangeError(`numPerm must be a positive integer, got ${numPerm}`);
    this.numPerm = numPerm;
    this.salts = salts(seed, numPerm);
  }

  /**
   * The signature: for each hash function, its minimum over the shingles. Values are kept as int32 with the sign bit
   * flipped (x ^ 0x80000000), whose signed order is the unsigned order of x, so the loop stays in small-integer
   * arithmetic; only equality between signatures matters to LSH.
   */
  signature(shingles: Uint32Array): Int32Array {
    const n = this.numPerm;
    const salt = this.salts;
    const sig = new Int32Array(n);
    const count = shingles.length;
    for (let p = 0; p < n; p++) {
      const s = salt[p]! | 0;
      let min = 0x7fffffff;
      for (let i = 0; i < count; i++) {
        let h = (shingles[i]! | 0) ^ s;
        h ^= h >>> 16;
        h = Math.imul(h, 0x85ebca6b);
        h ^= h >>> 13;
        h = Math.imul(h, 0xc2b2ae35);
        h = (h ^ (h >>> 16) ^ 0x80000000) | 0;
        if (h < min) min = h;
      }
      sig[p] = min;
    }
    return sig;
  }
}

/** Probability that two texts of Jaccard similarity j share at least one LSH bucket: 1 − (1 − j^rows)^bands. */
export function candidateProbability(j: number, { bands, rows }: LshParams): number {
  return 1 - (1 - j ** rows) ** bands;
}

/**
 * Banding for a threshold: among bands × rows ≤ numPerm, the one with the least false-candidate mass
 * (∫₀ᵗ P(j) dj, candidates below the threshold that verification must reject) whose probability of catching a pair
 * exactly at the threshold is at least minRecall. Pairs above the threshold are caught more often still. With a
 * verification step, a false candidate costs one Jaccard computation while a missed pair is lost, hence the recall floor.
 * For t = 0.8, 128 permutations: 18 bands × 7 rows (P(0.8) ≈ 0.986, P(0.9) > 0.99999, P(0.7) ≈ 0.79, P(0.5) ≈ 0.13).
 */
export function lshParams(threshold: number, numPerm: number, minRecall = 0.95): LshParams {
  if (!(threshold > 0 && threshold <= 1)) throw new RangeError(`threshold must be in (0, 1], got ${threshold}`);
  let best: LshParams | undefined;
  let bestMass = Infinity;
  for (let rows = 1; rows <= numPerm; rows++) {
    const bands = Math.floor(numPerm / rows);
    const params = { bands, rows };
    if (candidateProbability(threshold, params) < minRecall) continue;
    const steps = 200;
    let mass = 0;
    for (let i = 0; i < steps; i++) mass += candidateProbability(((i + 0.5) / steps) * threshold, params) * (threshold / steps);
    if (mass < bestMass) {
      bestMass = mass;
      best = params;
    }
  }
  return best ?? { bands: numPerm, rows: 1 };
}

/**
 * LSH buckets of all bands in one open-addressing table keyed by (band, hash of the band's rows); each slot heads a
 * linked list of items (typed arrays, grown by doubling).
 */
class LshTable {
  private keys = new Uint32Array(1024);
  private heads = new Int32Array(1024).fill(-1);
  private used = 0;
  private itemOf = new Int32Array(1024);
  private next = new Int32Array(1024);
  private entries = 0;

  /** Slot of key: its own or the empty one where it would go. */
  private slot(key: number): number {
    const mask = this.keys.length - 1;
    let s = fmix32(key) & mask;
    while (this.heads[s] !== -1 && this.keys[s] !== key) s = (s + 1) & mask;
    return s;
  }

  add(key: number, item: number): void {
    if ((this.used + 1) * 2 > this.keys.length) this.grow();
    const s = this.slot(key);
    if (this.heads[s] === -1) {
      this.keys[s] = key;
      this.used++;
    }
    if (this.entries === this.itemOf.length) {
      const itemOf = new Int32Array(this.entries * 2);
      itemOf.set(this.itemOf);
      this.itemOf = itemOf;
      const next = new Int32Array(this.entries * 2);
      next.set(this.next);
      this.next = next;
    }
    const e = this.entries++;
    this.itemOf[e] = item;
    this.next[e] = this.heads[s]!;
    this.heads[s] = e;
  }

  /** Calls visit for each item under key, newest first, until it returns true. */
  forEach(key: number, visit: (item: number) => boolean): boolean {
    const s = this.slot(key);
    for (let e = this.heads[s]!; e !== -1; e = this.next[e]!) if (visit(this.itemOf[e]!)) return true;
    return false;
  }

  private grow(): void {
    const keys = this.keys;
    const heads = this.heads;
    this.keys = new Uint32Array(keys.length * 2);
    this.heads = new Int32Array(keys.length * 2).fill(-1);
    for (let s = 0; s < keys.length; s++) {
      if (heads[s] === -1) continue;
      const t = this.slot(keys[s]!);
      this.keys[t] = keys[s]!;
      this.heads[t] = heads[s]!;
    }
  }
}

/**
 * Texts indexed for near-duplicate lookup. Items are numbered in the order they are added; a lookup returns the
 * lowest-numbered indexed item whose exact shingle Jaccard with the query reaches the threshold.
 */
export class NearDuplicateIndex {
  readonly threshold: number;
  readonly shingleSize: number;
  readonly params: LshParams;
  private readonly hasher: MinHasher;
  private readonly table = new LshTable();
  private readonly items: Uint32Array[] = [];
  private stamps = new Uint32Array(1024);
  private stamp = 0;
  private readonly bandKeys: Uint32Array;
  /** Candidates verified by exact Jaccard so far (for benchmarks and tests). */
  verifications = 0;

  constructor(options: MinHashOptions = {}) {
    const threshold = options.threshold ?? DEFAULT_MINHASH.threshold;
    const numPerm = options.numPerm ?? DEFAULT_MINHASH.numPerm;
    this.threshold = threshold;
    this.shingleSize = options.shingleSize ?? DEFAULT_MINHASH.shingleSize;
    if (!Number.isInteger(this.shingleSize) || this.shingleSize < 1) {
      throw new RangeError(`shingleSize must be a positive integer, got ${this.shingleSize}`);
    }
    if (options.bands !== undefined || options.rows !== undefined) {
      const bands = options.bands ?? Math.floor(numPerm / (options.rows ?? 1));
      const rows = options.rows ?? Math.floor(numPerm / bands);
      if (!(Number.isInteger(bands) && Number.isInteger(rows) && bands >= 1 && rows >= 1 && bands * rows <= numPerm)) {
        throw new RangeError(`bands × rows must be positive integers with bands × rows ≤ numPerm (${numPerm}), got ${bands} × ${rows}`);
      }
      this.params = { bands, rows };
    } else this.params = lshParams(threshold, numPerm);
    this.hasher = new MinHasher(numPerm, options.seed ?? DEFAULT_MINHASH.seed);
    this.bandKeys = new Uint32Array(this.params.bands);
  }

  fingerprint(text: string): Fingerprint {
    const shingles = shingleSet(text, this.shingleSize);
    return { shingles, signature: this.hasher.signature(shingles) };
  }

  get size(): number {
    return this.items.length;
  }

  /** Adds a fingerprint and returns its item number. A text without words is kept but matches nothing. */
  add(fingerprint: Fingerprint): number {
    const item = this.items.length;
    this.items.push(fingerprint.shingles);
    if (item === this.stamps.length) {
      const stamps = new Uint32Array(item * 2);
      stamps.set(this.stamps);
      this.stamps = stamps;
    }
    if (fingerprint.shingles.length === 0) return item;
    this.computeBandKeys(fingerprint.signature);
    for (let b = 0; b < this.bandKeys.length; b++) this.table.add(this.bandKeys[b]!, item);
    return item;
  }

  /** The lowest-numbered item at or above the threshold, with its similarity; undefined when there is none. */
  findMatch(fingerprint: Fingerprint): Match | undefined {
    let best: Match | undefined;
    this.verify(fingerprint, (item) => best === undefined || item < best.item, (match) => {
      best = match;
    });
    return best;
  }

  /** Every item at or above the threshold, by item number. */
  findAll(fingerprint: Fingerprint): Match[] {
    const out: Match[] = [];
    this.verify(fingerprint, () => true, (match) => out.push(match));
    return out.sort((a, b) => a.item - b.item);
  }

  /** Verifies each candidate sharing a bucket with the fingerprint once (when `wanted`), reporting those that match. */
  private verify(fingerprint: Fingerprint, wanted: (item: number) => boolean, found: (match: Match) => void): void {
    if (fingerprint.shingles.length === 0) return;
    this.computeBandKeys(fingerprint.signature);
    this.stamp = (this.stamp + 1) >>> 0;
    if (this.stamp === 0) {
      this.stamps.fill(0);
      this.stamp = 1;
    }
    const stamp = this.stamp;
    const visit = (item: number): boolean => {
      if (this.stamps[item] === stamp || !wanted(item)) return false;
      this.stamps[item] = stamp;
      this.verifications++;
      const similarity = jaccard(fingerprint.shingles, this.items[item]!);
      if (similarity >= this.threshold) found({ item, similarity });
      return false;
    };
    for (let b = 0; b < this.bandKeys.length; b++) this.table.forEach(this.bandKeys[b]!, visit);
  }

  private computeBandKeys(signature: Int32Array): void {
    const { bands, rows } = this.params;
    for (let b = 0; b < bands; b++) {
      let h = Math.imul(b + 1, 0x9e3779b1);
      for (let r = 0; r < rows; r++) h = Math.imul((h << 5) | (h >>> 27), 0x85ebca6b) ^ signature[b * rows + r]!;
      this.bandKeys[b] = fmix32(h);
    }
  }
}
