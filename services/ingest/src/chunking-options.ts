import { create } from "@bufbuild/protobuf";
import { ChunkingOptionsSchema, TokenizerKind, type ChunkingOptions } from "@ragtune/proto";
import { DEFAULT_PACK_SECTIONS, loadTokenizer, type TokenCounter, type TokenizerName } from "@ragtune/text";
import { MAX_CHUNK_SIZE, MIN_CHUNK_SIZE } from "./config.js";

/** Chunking options with every default filled in. */
export interface EffectiveChunking {
  tokenizer: TokenizerName;
  chunkSize: number;
  overlap: number;
  /** Pack small sibling sections into one chunk up to the budget (see chunkDocument). */
  packSections: boolean;
}

const KIND_TO_NAME: Partial<Record<TokenizerKind, TokenizerName>> = {
  [TokenizerKind.MISTRAL]: "mistral",
  [TokenizerKind.LLAMA3]: "llama3",
  [TokenizerKind.QWEN3]: "qwen3",
};

const NAME_TO_KIND: Record<TokenizerName, TokenizerKind> = {
  mistral: TokenizerKind.MISTRAL,
  llama3: TokenizerKind.LLAMA3,
  qwen3: TokenizerKind.QWEN3,
};

export interface ChunkingDefaults {
  tokenizer: TokenizerName;
  chunkSize: number;
  overlap: number;
  /** Default DEFAULT_PACK_SECTIONS (true). */
  packSections?: boolean;
}

/** A request's chunking options with the defaults filled in, or a problem naming the bad field. */
export function resolveChunking(
  options: ChunkingOptions | undefined,
  defaults: ChunkingDefaults,
): { ok: true; value: EffectiveChunking } | { ok: false; field: string; message: string } {
  let tokenizer = defaults.tokenizer;
  const kind = options?.tokenizer ?? TokenizerKind.UNSPECIFIED;
  if (kind !== TokenizerKind.UNSPECIFIED) {
    const name = KIND_TO_NAME[kind];
    if (name === undefined) {
      return { ok: false, field: "chunking.tokenizer", message: `unknown tokenizer ${kind}: use TOKENIZER_KIND_MISTRAL, TOKENIZER_KIND_LLAMA3 or TOKENIZER_KIND_QWEN3` };
    }
    tokenizer = name;
  }
  const chunkSize = options?.chunkSizeTokens ?? defaults.chunkSize;
  if (chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    return { ok: false, field: "chunking.chunk_size_tokens", message: `${chunkSize} is out of range: use ${MIN_CHUNK_SIZE}..${MAX_CHUNK_SIZE} tokens (default ${defaults.chunkSize})` };
  }
  const overlap = options?.chunkOverlapTokens ?? (defaults.overlap * 2 < chunkSize ? defaults.overlap : 0);
  if (overlap * 2 >= chunkSize) {
    return { ok: false, field: "chunking.chunk_overlap_tokens", message: `${overlap} must be below half the chunk size (${chunkSize} tokens)` };
  }
  const packSections = options?.packSections ?? defaults.packSections ?? DEFAULT_PACK_SECTIONS;
  return { ok: true, value: { tokenizer, chunkSize, overlap, packSections } };
}

export function toChunkingProto(c: EffectiveChunking): ChunkingOptions {
  return create(ChunkingOptionsSchema, {
    tokenizer: NAME_TO_KIND[c.tokenizer],
    chunkSizeTokens: c.chunkSize,
    chunkOverlapTokens: c.overlap,
    packSections: c.packSections,
  });
}

export function fromChunkingProto(c: ChunkingOptions | undefined, defaults: ChunkingDefaults): EffectiveChunking {
  const resolved = resolveChunking(c, defaults);
  if (!resolved.ok) throw new Error(`stored chunking options are invalid: ${resolved.message}`);
  return resolved.value;
}

export function tokenizerKind(name: TokenizerName): TokenizerKind {
  return NAME_TO_KIND[name];
}

export function sameChunking(a: ChunkingOptions | undefined, b: ChunkingOptions | undefined): boolean {
  return (
    a !== undefined &&
    b !== undefined &&
    a.tokenizer === b.tokenizer &&
    a.chunkSizeTokens === b.chunkSizeTokens &&
    a.chunkOverlapTokens === b.chunkOverlapTokens &&
    (a.packSections ?? DEFAULT_PACK_SECTIONS) === (b.packSections ?? DEFAULT_PACK_SECTIONS)
  );
}

/** One tokenizer instance per name, loaded on first use (loading parses a multi-MB tokenizer.json). */
export class TokenizerCache {
  private readonly loaded = new Map<TokenizerName, TokenCounter>();

  get(name: TokenizerName): TokenCounter {
    let counter = this.loaded.get(name);
    if (counter === undefined) {
      counter = loadTokenizer(name);
      this.loaded.set(name, counter);
    }
    return counter;
  }
}
