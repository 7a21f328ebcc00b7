import { create } from "@bufbuild/protobuf";
import { ChunkingOptionsSchema, TokenizerKind } from "@ragtune/proto";
import { describe, expect, it } from "vitest";
import { resolveChunking } from "./chunking-options.js";
import { loadIngestConfig } from "./config.js";

const defaults = { tokenizer: "mistral" as const, chunkSize: 512, overlap: 0 };

describe("resolveChunking", () => {
  it("fills defaults and maps tokenizer kinds", () => {
    expect(resolveChunking(undefined, defaults)).toEqual({ ok: true, value: { tokenizer: "mistral", chunkSize: 512, overlap: 0 } });
    const r = resolveChunking(create(ChunkingOptionsSchema, { tokenizer: TokenizerKind.QWEN3, chunkSizeTokens: 128, chunkOverlapTokens: 16 }), defaults);
    expect(r).toEqual({ ok: true, value: { tokenizer: "qwen3", chunkSize: 128, overlap: 16 } });
  });

  it("names the bad field", () => {
    const bad = (o: Parameters<typeof create<typeof ChunkingOptionsSchema>>[1]) => {
      const r = resolveChunking(create(ChunkingOptionsSchema, o), defaults);
      return r.ok ? undefined : r.field;
    };
    expect(bad({ chunkSizeTokens: 31 })).toBe("chunking.chunk_size_tokens");
    expect(bad({ chunkSizeTokens: 8193 })).toBe("chunking.chunk_size_tokens");
    expect(bad({ chunkSizeTokens: 64, chunkOverlapTokens: 32 })).toBe("chunking.chunk_overlap_tokens");
    expect(bad({ tokenizer: 7 as TokenizerKind })).toBe("chunking.tokenizer");
  });
});

describe("loadIngestConfig", () => {
  it("reads the ingest variables with defaults", () => {
    const c = loadIngestConfig({ INGEST_ALLOWED_ROOT: "/srv/docs" });
    expect(c.INGEST_ALLOWED_ROOT).toBe("/srv/docs");
    expect(c.INGEST_MAX_DOCUMENT_BYTES).toBe(10 * 1024 * 1024);
    expect(c.INGEST_DEFAULT_TOKENIZER).toBe("mistral");
    expect(c.INGEST_DEFAULT_CHUNK_SIZE).toBe(512);
    expect(loadIngestConfig({}).INGEST_ALLOWED_ROOT).toBeUndefined();
  });

  it("names a bad variable", () => {
    expect(() => loadIngestConfig({ INGEST_DEFAULT_TOKENIZER: "gpt2" })).toThrow(/INGEST_DEFAULT_TOKENIZER/);
    expect(() => loadIngestConfig({ INGEST_DEFAULT_CHUNK_SIZE: "16" })).toThrow(/INGEST_DEFAULT_CHUNK_SIZE/);
    expect(() => loadIngestConfig({ INGEST_DEFAULT_CHUNK_SIZE: "64", INGEST_DEFAULT_CHUNK_OVERLAP: "32" })).toThrow(/INGEST_DEFAULT_CHUNK_OVERLAP/);
  });
});
