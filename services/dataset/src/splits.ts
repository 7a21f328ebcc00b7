/**
 * Train/val/test splits without leaks.
 *
 * Examples are grouped by their source chunk (the chunk whose text is the context; option: by document), and a group
 * never straddles two splits, so no context the model is tested on was seen in training. Groups are placed one by one
 * in the order of a seeded hash of their key (no Math.random: the same examples and seed give the same splits on every
 * run and in any input order); each goes to the split whose quota is least filled, measured per stratum — question
 * kind × answerable — so every stratum is split in the configured ratios (up to one group's size).
 *
 * Afterwards, train examples that are near duplicates of a val or test example (question + answer word 5-gram
 * Jaccard ≥ threshold, MinHash LSH verified exactly: the same question and answer from a paragraph repeated on two
 * pages) are dropped from train, with reason near_duplicate_of_eval.
 *
 * An unanswerable example borrows its question from another chunk (distractorSource), which may sit in another split.
 * That cannot inflate a test score: the model is asked to refuse a question it may have learned to answer elsewhere,
 * or to answer one it learned to refuse, which is harder, not easier.
 */
import type { DatasetExample, QuestionKind } from "./example.js";
import { QUESTION_KINDS, fingerprintText } from "./example.js";
import { DEFAULT_MINHASH, hash32, NearDuplicateIndex } from "./minhash.js";

export const SPLITS = ["train", "val", "test"] as const;
export type SplitName = (typeof SPLITS)[number];

export type SplitRatios = Record<SplitName, number>;

export interface SplitConfig {
  /** Shares of examples per split, each in 0..1, summing to 1. Default 0.6 / 0.2 / 0.2. */
  ratios: SplitRatios;
  /** Seed of the group order. Default 42. */
  seed: number;
  /** What may not straddle two splits: the context chunk (default) or the whole document. */
  groupBy: "chunk" | "document";
  /** Drop train examples that nearly repeat a val or test example. Default true. */
  dropNearDuplicatesFromTrain: boolean;
  /** Jaccard similarity from which a train example repeats an eval example. Default 0.8. */
  nearDuplicateThreshold: number;
}

export const DEFAULT_SPLIT_CONFIG: Readonly<SplitConfig> = Object.freeze({
  ratios: Object.freeze({ train: 0.6, val: 0.2, test: 0.2 }),
  seed: 42,
  groupBy: "chunk",
  dropNearDuplicatesFromTrain: true,
  nearDuplicateThreshold: DEFAULT_MINHASH.threshold,
});

export const SPLIT_DROP_REASONS = ["near_duplicate_of_eval"] as const;
export type SplitDropReason = (typeof SPLIT_DROP_REASONS)[number];

export interface SplitDrop {
  example: DatasetExample;
  reason: SplitDropReason;
  detail: string;
  /** The val or test example it repeats. */
  duplicateOf: string;
}

export interface SplitStats {
  examples: number;
  answerable: number;
  unanswerable: number;
  byKind: Record<QuestionKind, number>;
  /** Chunks (or documents) in the split. */
  groups: number;
}

export interface SplitResult {
  /** Each split sorted by example id. */
  train: DatasetExample[];
  val: DatasetExample[];
  test: DatasetExample[];
  /** Train examples dropped as near duplicates of val/test examples, sorted by id. */
  dropped: SplitDrop[];
  /** Counts of each split after the drops. */
  stats: Record<SplitName, SplitStats>;
}

/** Settings with the defaults filled in; a RangeError names the bad field. */
export function resolveSplitConfig(partial: Partial<SplitConfig> = {}): SplitConfig {
  const config: SplitConfig = {
    ratios: partial.ratios ?? DEFAULT_SPLIT_CONFIG.ratios,
    seed: partial.seed ?? DEFAULT_SPLIT_CONFIG.seed,
    groupBy: partial.groupBy ?? DEFAULT_SPLIT_CONFIG.groupBy,
    dropNearDuplicatesFromTrain: partial.dropNearDuplicatesFromTrain ?? DEFAULT_SPLIT_CONFIG.dropNearDuplicatesFromTrain,
    nearDuplicateThreshold: partial.nearDuplicateThreshold ?? DEFAULT_SPLIT_CONFIG.nearDuplicateThreshold,
  };
  let sum = 0;
  for (const split of SPLITS) {
    const r = config.ratios[split];
    if (!(Number.isFinite(r) && r >= 0 && r <= 1)) throw new RangeError(`ratios.${split} must be in [0, 1], got ${r}`);
    sum += r;
  }
  if (Math.abs(sum - 1) > 1e-6) throw new RangeError(`split ratios must sum to 1, got ${SPLITS.map((s) => config.ratios[s]).join(" + ")} = ${sum}`);
  if (!(Number.isInteger(config.seed) && config.seed >= 0 && config.seed <= 0xffffffff)) throw new RangeError(`seed must be an integer in 0..2^32-1, got ${config.seed}`);
  if (config.groupBy !== "chunk" && config.groupBy !== "document") throw new RangeError(`groupBy must be "chunk" or "document", got ${JSON.stringify(config.groupBy)}`);
  if (!(config.nearDuplicateThreshold > 0 && config.nearDuplicateThreshold <= 1)) {
    throw new RangeError(`nearDuplicateThreshold must be in (0, 1], got ${config.nearDuplicateThreshold}`);
  }
  return config;
}

/** The key a split keeps together: the context chunk, or its document. */
export function groupKeyOf(example: DatasetExample, groupBy: SplitConfig["groupBy"]): string {
  return groupBy === "chunk" ? example.chunkId : example.documentId;
}

function stratumOf(example: DatasetExample): string {
  return `${example.kind}/${example.answerable ? "answerable" : "unanswerable"}`;
}

function compareIds(a: DatasetExample, b: DatasetExample): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

interface Group {
  key: string;
  order: [number, number];
  examples: DatasetExample[];
  strata: Map<string, number>;
}

/** Splits examples into train, val and test. Example ids must be unique. */
export function splitExamples(examples: readonly DatasetExample[], partial: Partial<SplitConfig> = {}): SplitResult {
  const config = resolveSplitConfig(partial);
  const ids = new Set<string>();
  const groups = new Map<string, Group>();
  const totals = new Map<string, number>();
  for (const example of examples) {
    if (ids.has(example.id)) throw new Error(`example id ${JSON.stringify(example.id)} occurs twice: ids must be unique to split`);
    ids.add(example.id);
    const key = groupKeyOf(example, config.groupBy);
    let group = groups.get(key);
    if (group === undefined) {
      group = { key, order: [hash32(key, config.seed), hash32(key, config.seed ^ 0x9e3779b9)], examples: [], strata: new Map() };
      groups.set(key, group);
    }
    group.examples.push(example);
    const stratum = stratumOf(example);
    group.strata.set(stratum, (group.strata.get(stratum) ?? 0) + 1);
    totals.set(stratum, (totals.get(stratum) ?? 0) + 1);
  }

  const ordered = [...groups.values()].sort((a, b) => a.order[0] - b.order[0] || a.order[1] - b.order[1] || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const open = SPLITS.filter((s) => config.ratios[s] > 0);
  const assigned: Record<SplitName, Map<string, number>> = { train: new Map(), val: new Map(), test: new Map() };
  const members: Record<SplitName, DatasetExample[]> = { train: [], val: [], test: [] };
  for (const group of ordered) {
    let best: SplitName = open[0]!;
    let bestNeed = -Infinity;
    for (const split of open) {
      // Σ over the group's strata of (examples) × (share of the split's quota for that stratum still open)
      let need = 0;
      for (const [stratum, n] of group.strata) {
        const target = config.ratios[split] * totals.get(stratum)!;
        need += (n * (target - (assigned[split].get(stratum) ?? 0))) / target;
      }
      if (need > bestNeed) {
        bestNeed = need;
        best = split;
      }
    }
    for (const [stratum, n] of group.strata) assigned[best].set(stratum, (assigned[best].get(stratum) ?? 0) + n);
    members[best].push(...group.examples);
  }
  for (const split of SPLITS) members[split].sort(compareIds);

  const dropped: SplitDrop[] = [];
  if (config.dropNearDuplicatesFromTrain && members.train.length > 0) {
    const index = new NearDuplicateIndex({ threshold: config.nearDuplicateThreshold, seed: config.seed });
    const evalIds: string[] = [];
    for (const example of [...members.val, ...members.test].sort(compareIds)) {
      index.add(index.fingerprint(fingerprintText(example)));
      evalIds.push(example.id);
    }
    const kept: DatasetExample[] = [];
    for (const example of members.train) {
      const match = index.findMatch(index.fingerprint(fingerprintText(example)));
      if (match === undefined) kept.push(example);
      else {
        const of = evalIds[match.item]!;
        dropped.push({
          example,
          reason: "near_duplicate_of_eval",
          detail: `question and answer ${match.similarity.toFixed(2)} similar (word 5-gram Jaccard) to ${of}, which is in val or test`,
          duplicateOf: of,
        });
      }
    }
    members.train = kept;
  }

  const stats = Object.fromEntries(SPLITS.map((split) => [split, statsOf(members[split], config.groupBy)])) as Record<SplitName, SplitStats>;
  return { train: members.train, val: members.val, test: members.test, dropped, stats };
}

function statsOf(examples: readonly DatasetExample[], groupBy: SplitConfig["groupBy"]): SplitStats {
  const byKind = Object.fromEntries(QUESTION_KINDS.map((k) => [k, 0])) as Record<QuestionKind, number>;
  const groups = new Set<string>();
  let answerable = 0;
  for (const example of examples) {
    byKind[example.kind]++;
    if (example.answerable) answerable++;
    groups.add(groupKeyOf(example, groupBy));
  }
  return { examples: examples.length, answerable, unanswerable: examples.length - answerable, byKind, groups: groups.size };
}
