import { create, toJson } from "@bufbuild/protobuf";
import { ChunkSchema, TokenizerKind } from "@ragtune/proto";
import { describe, expect, it } from "vitest";
import { decodeChunkSet, encodeChunkSet } from "./document-store.js";

describe("encodeChunkSet", () => {
  it("writes exactly the bytes of the proto3 JSON mapping (so stored chunk sets hash as before) and reads back", () => {
    let seed = 3;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    const texts = ["", "plain", "quotes \" and \\ backslash", "unicode — ünïcödé ✓ 😀", "line\nbreak\ttab", "</script>"];
    const chunks = Array.from({ length: 200 }, () =>
      create(ChunkSchema, {
        id: pick(["", "c-1", "chunk_ab12"]),
        documentId: pick(["", "doc-x"]),
        collection: pick(["", "docs"]),
        headingPath: pick([[], ["Guide"], ["Guide", "Section — 2"]]),
        text: pick(texts),
        tokenCount: pick([0, 1, 512]),
        charStart: pick([0, 17]),
        charEnd: pick([0, 4_000_000]),
        ordinal: pick([0, 3]),
        tokenizer: pick([TokenizerKind.UNSPECIFIED, TokenizerKind.MISTRAL, TokenizerKind.LLAMA3, TokenizerKind.QWEN3, 99 as TokenizerKind]),
      }),
    );
    const reference = Buffer.from(JSON.stringify(chunks.map((c) => toJson(ChunkSchema, c))), "utf8");
    const encoded = encodeChunkSet(chunks);
    expect(Buffer.from(encoded).equals(reference)).toBe(true);
    expect(decodeChunkSet(encoded)).toEqual(chunks);
  });
});
