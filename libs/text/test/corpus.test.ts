import { readFileSync } from "node:fs";
import { relative } from "node:path";
import { AWS_CORPUS_DIR, corpusMarkdownFiles } from "@ragtune/testing";
import { Tokenizer } from "tokenizers";
import { describe, expect, it } from "vitest";
import {
  TOKENIZER_NAMES,
  chunkDocument,
  chunkStats,
  diffChunks,
  documentIdFor,
  loadTokenizer,
  parseDocument,
  tokenizerFile,
  type Chunk,
  type ParsedDocument,
} from "../src/index.js";

const CORPUS = AWS_CORPUS_DIR;
const SIZES = [128, 256, 512, 1024];


const files = corpusMarkdownFiles(CORPUS);
const docs: { id: string; doc: ParsedDocument }[] = files.map((file) => ({
  id: documentIdFor("aws-docs", relative(CORPUS, file)),
  doc: parseDocument({ bytes: readFileSync(file), filename: relative(CORPUS, file) }),
}));

describe("the AWS docs corpus", () => {
  it("parses every file with a heading outline", () => {
    expect(files.length).toBeGreaterThanOrEqual(80);
    for (const { doc } of docs) {
      expect(doc.sections.length).toBeGreaterThan(0);
      expect(doc.sections.some((s) => s.headingPath.length > 0)).toBe(true);
    }
  });

  for (const name of TOKENIZER_NAMES) {
    it(`${name}: no chunk over budget at ${SIZES.join("/")} tokens, and every count equals the reference`, async () => {
      const reference = Tokenizer.fromFile(tokenizerFile(name));
      const counter = loadTokenizer(name);
      for (const chunkSize of SIZES) {
        const chunks = docs.flatMap(({ id, doc }) => chunkDocument(doc, { tokenizer: counter, chunkSize, documentId: id }));
        const encodings = await reference.encodeBatch(
          chunks.map((c) => c.text),
          { addSpecialTokens: false },
        );
        const mismatches = chunks.filter((c, i) => encodings[i]!.getIds().length !== c.tokenCount);
        expect(mismatches.map((c) => c.id), `${name}/${chunkSize}: recorded counts differ from the reference`).toEqual([]);
        const stats = chunkStats(chunks, chunkSize);
        expect(stats.distribution.overBudget, `${name}/${chunkSize}`).toBe(0);
        expect(stats.distribution.max).toBeLessThanOrEqual(chunkSize);
        expect(stats.documents.length).toBe(docs.length);
        expect(new Set(chunks.map((c) => c.id)).size).toBe(chunks.length);
      }
    }, 240_000);
  }

  it("IDs are unique over the corpus (also across collections) and stable across re-ingest", () => {
    const counter = loadTokenizer("mistral");
    const ingest = (collection: string): Chunk[] =>
      files.flatMap((file) => {
        const path = relative(CORPUS, file);
        const doc = parseDocument({ bytes: readFileSync(file), filename: path });
        return chunkDocument(doc, { tokenizer: counter, documentId: documentIdFor(collection, path) });
      });
    const first = ingest("aws-docs");
    const again = ingest("aws-docs");
    const other = ingest("another-collection");
    expect(again.map((c) => c.id)).toEqual(first.map((c) => c.id));
    const all = [...first, ...other].map((c) => c.id);
    expect(new Set(all).size).toBe(all.length);

    const diff = diffChunks(
      first.map((c) => c.id),
      again,
    );
    expect(diff.added).toEqual([]);
    expect(diff.removed).toEqual([]);
  }, 120_000);

  it("re-chunking with the previous chunks tokenizes only edited sections (and, packed, their neighbours) and equals a full re-chunk", () => {
    const counter = loadTokenizer("mistral");
    let tokenized: string[] = [];
    const recording = {
      name: counter.name,
      file: counter.file,
      count: (text: string) => (tokenized.push(text), counter.count(text)),
      pieces: (text: string) => (tokenized.push(text), counter.pieces(text)),
    };
    for (const packSections of [false, true]) {
      for (const { id, doc } of docs) {
        const before = chunkDocument(doc, { tokenizer: counter, documentId: id, packSections });
        tokenized = [];
        expect(chunkDocument(doc, { tokenizer: recording, documentId: id, previous: before, packSections })).toEqual(before);
        expect(tokenized, doc.filename).toEqual([]);
        // Edit the last section: only its text is tokenized, every other section's chunks are reused; packed, the
        // text of the chunk that holds it and of the one before (whose end depends on the section after it).
        const last = doc.sections[doc.sections.length - 1]!;
        const edited: ParsedDocument = { ...doc, text: `${doc.text} Edited.`, sections: [...doc.sections.slice(0, -1), { ...last, charEnd: last.charEnd + 8 }] };
        const full = chunkDocument(edited, { tokenizer: counter, documentId: id, packSections });
        let changed = 0;
        while (full[changed]!.id === before[changed]?.id) changed++;
        const from = packSections ? (full[changed - 1]?.charStart ?? 0) : last.charStart;
        const lastText = edited.text.slice(from);
        tokenized = [];
        expect(chunkDocument(edited, { tokenizer: recording, documentId: id, previous: before, packSections }), doc.filename).toEqual(full);
        expect(tokenized.length, doc.filename).toBeGreaterThan(0);
        expect(tokenized.filter((text) => !lastText.includes(text)), doc.filename).toEqual([]);
      }
    }
  }, 120_000);
});
