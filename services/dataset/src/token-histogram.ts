/**
 * Token-length histograms of a dataset version's splits, computed once when the version is finalized and stored with
 * its stats. All splits share one set of bucket edges so they can be compared on one axis.
 */

export interface HistogramBucket {
  /** Inclusive lower edge. */
  lower: number;
  /** Exclusive upper edge. */
  upper: number;
  count: number;
}

/** Upper bound on buckets per split: enough to see a distribution's shape, small enough to store with every version. */
export const MAX_BUCKETS = 24;

/** The smallest width of the form 1, 2 or 5 × 10^k that covers [low, high] in at most `maxBuckets` buckets. */
export function bucketWidth(low: number, high: number, maxBuckets = MAX_BUCKETS): number {
  for (let magnitude = 1; ; magnitude *= 10) {
    for (const step of [1, 2, 5]) {
      const width = step * magnitude;
      if (Math.floor(high / width) - Math.floor(low / width) + 1 <= maxBuckets) return width;
    }
  }
}

/**
 * One histogram per entry of `countsBySplit`, in the same order, over shared edges: from the bucket holding the
 * smallest count of any split to the bucket holding the largest, empty buckets included. No counts at all: no buckets.
 */
export function tokenHistograms(countsBySplit: readonly (readonly number[])[], maxBuckets = MAX_BUCKETS): HistogramBucket[][] {
  let low = Infinity;
  let high = -Infinity;
  for (const counts of countsBySplit) {
    for (const n of counts) {
      if (n < low) low = n;
      if (n > high) high = n;
    }
  }
  if (low === Infinity) return countsBySplit.map(() => []);
  const width = bucketWidth(low, high, maxBuckets);
  const first = Math.floor(low / width);
  const buckets = Math.floor(high / width) - first + 1;
  return countsBySplit.map((counts) => {
    const out = Array.from({ length: buckets }, (_, i) => ({ lower: (first + i) * width, upper: (first + i + 1) * width, count: 0 }));
    for (const n of counts) out[Math.floor(n / width) - first]!.count++;
    return out;
  });
}
