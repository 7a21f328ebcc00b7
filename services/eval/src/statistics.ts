/**
 * Aggregates over per-item scores: means, nearest-rank percentiles, paired bootstrap confidence intervals of a mean
 * difference (seeded, so a report is the same on every run), and Cohen's kappa between two raters.
 */
import { seededDraws } from "./seeded-draws.js";

export function mean(values: readonly number[]): number {
  if (values.length === 0) return 0;
  let sum = 0;
  for (const v of values) sum += v;
  return sum / values.length;
}

/** Nearest-rank percentile (p in 0..100) of the values; 0 for none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(sorted.length, rank) - 1]!;
}

export interface Interval {
  /** mean(b) − mean(a). */
  delta: number;
  low: number;
  high: number;
  n: number;
}

/**
 * The mean paired difference b[i] − a[i] with a percentile bootstrap interval: `resamples` resamples of the item
 * indices with replacement (the same indices for both models, which keeps the pairing), the `level` central share of
 * the resampled means. Deterministic for a seed.
 */
export function pairedBootstrap(a: readonly number[], b: readonly number[], options: { seed: number; resamples?: number; level?: number }): Interval {
  if (a.length !== b.length) throw new RangeError(`paired samples differ in length (${a.length} vs ${b.length})`);
  const n = a.length;
  if (n === 0) return { delta: 0, low: 0, high: 0, n: 0 };
  const diffs = new Float64Array(n);
  for (let i = 0; i < n; i++) diffs[i] = b[i]! - a[i]!;
  const delta = mean(Array.from(diffs));
  const resamples = options.resamples ?? 1000;
  const level = options.level ?? 0.95;
  const random = seededDraws(options.seed);
  const means = new Float64Array(resamples);
  for (let r = 0; r < resamples; r++) {
    let sum = 0;
    for (let i = 0; i < n; i++) sum += diffs[Math.floor(random() * n)]!;
    means[r] = sum / n;
  }
  means.sort();
  const tail = (1 - level) / 2;
  const at = (q: number) => means[Math.min(resamples - 1, Math.max(0, Math.floor(q * resamples)))]!;
  return { delta, low: at(tail), high: at(1 - tail), n };
}

/** The mean of the values with a percentile bootstrap interval (a paired bootstrap against zeros). */
export function bootstrapMean(values: readonly number[], options: { seed: number; resamples?: number; level?: number }): Interval {
  return pairedBootstrap(new Array<number>(values.length).fill(0), values, options);
}

/**
 * Cohen's kappa of two raters' labels over the same items: (observed agreement − chance agreement) / (1 − chance).
 * 1 when both agree on everything and chance agreement is already 1 (a single label); undefined for no items.
 */
export function cohensKappa<T>(a: readonly T[], b: readonly T[]): number | undefined {
  if (a.length !== b.length) throw new RangeError(`raters labelled different numbers of items (${a.length} vs ${b.length})`);
  const n = a.length;
  if (n === 0) return undefined;
  let agree = 0;
  const countA = new Map<T, number>();
  const countB = new Map<T, number>();
  for (let i = 0; i < n; i++) {
    if (a[i] === b[i]) agree++;
    countA.set(a[i]!, (countA.get(a[i]!) ?? 0) + 1);
    countB.set(b[i]!, (countB.get(b[i]!) ?? 0) + 1);
  }
  const observed = agree / n;
  let chance = 0;
  for (const [label, ca] of countA) chance += (ca / n) * ((countB.get(label) ?? 0) / n);
  if (chance === 1) return observed === 1 ? 1 : 0;
  return (observed - chance) / (1 - chance);
}
