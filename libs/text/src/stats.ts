import type { Chunk } from "./chunker.js";

export interface TokenDistribution {
  chunks: number;
  totalTokens: number;
  min: number;
  mean: number;
  median: number;
  max: number;
  /** Share of chunks holding 75–100% of the budget (0–1). */
  shareNearBudget: number;
  /** Chunks over the budget (0 for ragtune's chunker). */
  overBudget: number;
}

export interface DocumentChunkStats {
  documentId: string;
  chunks: number;
  tokens: number;
}

export interface ChunkStats {
  chunkSize: number;
  distribution: TokenDistribution;
  documents: DocumentChunkStats[];
}

/** Token distribution of a set of chunk token counts against a budget. */
export function tokenDistribution(tokenCounts: readonly number[], chunkSize: number): TokenDistribution {
  const sorted = [...tokenCounts].sort((a, b) => a - b);
  const n = sorted.length;
  const total = sorted.reduce((sum, x) => sum + x, 0);
  const median = n === 0 ? 0 : n % 2 === 1 ? sorted[(n - 1) / 2]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2;
  const near = sorted.filter((x) => x >= 0.75 * chunkSize && x <= chunkSize).length;
  return {
    chunks: n,
    totalTokens: total,
    min: n === 0 ? 0 : sorted[0]!,
    mean: n === 0 ? 0 : total / n,
    median,
    max: n === 0 ? 0 : sorted[n - 1]!,
    shareNearBudget: n === 0 ? 0 : near / n,
    overBudget: sorted.filter((x) => x > chunkSize).length,
  };
}

/** Statistics of one ingest run: the token distribution over all chunks and per-document counts. */
export function chunkStats(chunks: readonly Chunk[], chunkSize: number): ChunkStats {
  const perDocument = new Map<string, DocumentChunkStats>();
  for (const chunk of chunks) {
    let doc = perDocument.get(chunk.documentId);
    if (doc === undefined) {
      doc = { documentId: chunk.documentId, chunks: 0, tokens: 0 };
      perDocument.set(chunk.documentId, doc);
    }
    doc.chunks++;
    doc.tokens += chunk.tokenCount;
  }
  return {
    chunkSize,
    distribution: tokenDistribution(chunks.map((c) => c.tokenCount), chunkSize),
    documents: [...perDocument.values()],
  };
}
