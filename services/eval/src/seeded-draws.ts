import { createHash } from "node:crypto";

/**
 * Uniform draws in [0, 1) for a seed (the bootstrap's resamples, the item sample), the same on every run: xorshift128
 * (Marsaglia) with its state taken from SHA-256 of the seed. Product code of its own: libs/testing's seededRandom is
 * a test-only package.
 */
export function seededDraws(seed: number): () => number {
  const digest = createHash("sha256").update(`eval-draws:${seed}`).digest();
  let x = digest.readUInt32LE(0) || 1;
  let y = digest.readUInt32LE(4);
  let z = digest.readUInt32LE(8);
  let w = digest.readUInt32LE(12);
  return () => {
    const t = (x ^ (x << 11)) >>> 0;
    x = y;
    y = z;
    z = w;
    w = (w ^ (w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return w / 4294967296;
  };
}
