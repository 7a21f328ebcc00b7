export { loadTokenizer, tokenizerFile, TOKENIZER_NAMES } from "./tokenizer.js";
export type { PieceCounts, TokenCounter, TokenizerName } from "./tokenizer.js";
export { DEFAULT_MAX_BYTES, DocumentParseError, detectMediaType, parseDocument } from "./parse.js";
export type { MediaType, ParseErrorCode, ParseInput, ParseOptions, ParsedDocument, Section } from "./parse.js";
export { DEFAULT_CHUNK_SIZE, DEFAULT_PACK_SECTIONS, chunkDocument, diffChunks, documentIdFor } from "./chunker.js";
export type { Chunk, ChunkDiff, ChunkOptions, PreviousChunk } from "./chunker.js";
export { chunkStats, tokenDistribution } from "./stats.js";
export type { ChunkStats, DocumentChunkStats, TokenDistribution } from "./stats.js";
