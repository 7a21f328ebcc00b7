import { create } from "@bufbuild/protobuf";
import { ChunkingOptionsSchema, TokenizerKind } from "@ragtune/proto";
import { describe, expect, it } from "vitest";
import { fromChunkingProto, resolveChunking, sameChunking, toChunkingProto } from "./chunking-options.js";
import { loadIngestConfig } from "./config.js";

const defaults = { tokenizer: "mistral" as const, chunkSize: 512, overlap: 0 };

describe("resolveChunking", () => {
  it("fills defaults and maps tokenizer kinds", () => {
    expect(resolveChunking(undefined, defaults)).toEqual({ ok: true, value: { tokenizer: "mistral", chunkSize: 512, overlap: 0, packSections: true } });
    const r = resolveChunking(create(ChunkingOptionsSchema, { tokenizer: TokenizerKind.QWEN3, chunkSizeTokens: 128, chunkOverlapTokens: 16 }), defaults);
    expect(r).toEqual({ ok: true, value: { tokenizer: "qwen3", chunkSize: 128, overlap: 16, packSections: true } });
  });

  it("packs sections unless the request or the defaults say not to, and keeps the choice in the stored options", () => {
    const off = resolveChunking(create(ChunkingOptionsSchema, { packSections: false }), defaults);
    expect(off.ok && off.value.packSections).toBe(false);
    const byDefault = resolveChunking(undefined, { ...defaults, packSections: false });
    expect(byDefault.ok && byDefault.value.packSections).toBe(false);
    const asked = resolveChunking(create(ChunkingOptionsSchema, { packSections: true }), { ...defaults, packSections: false });
    expect(asked.ok && asked.value.packSections).toBe(true);
    // A run stored before the field existed (unset) resolves to packing, and a stored choice survives the round trip.
    expect(fromChunkingProto(create(ChunkingOptionsSchema, { chunkSizeTokens: 256 }), defaults).packSections).toBe(true);
    const stored = toChunkingProto({ tokenizer: "llama3", chunkSize: 256, overlap: 0, packSections: false });
    expect(stored.packSections).toBe(false);
    expect(fromChunkingProto(stored, defaults)).toEqual({ tokenizer: "llama3", chunkSize: 256, overlap: 0, packSections: false });
    expect(sameChunking(stored, toChunkingProto({ tokenizer: "llama3", chunkSize: 256, overlap: 0, packSections: true }))).toBe(false);
    expect(sameChunking(create(ChunkingOptionsSchema, { chunkSizeTokens: 256 }), create(ChunkingOptionsSchema, { chunkSizeTokens: 256, packSections: true }))).toBe(true);
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
