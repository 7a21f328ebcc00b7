import { readFileSync } from "node:fs";
import { relative } from "node:path";
import { fileURLToPath } from "node:url";
import { chunkDocument, documentIdFor, loadTokenizer, parseDocument } from "@ragtune/text";
import type { SourceChunk } from "../src/extractive-generator.js";

/** The sample documentation the demo ingests. */
export const SAMPLE_DOCS = fileURLToPath(new URL("../../../tools/sample-docs", import.meta.url));

/** Chunks of documents made the way services/ingest makes them: parse, chunk (with its defaults), the chunk's heading path. */
export function ingestChunks(root: string, files: readonly string[], chunkSize: number): SourceChunk[] {
  const tokenizer = loadTokenizer("mistral");
  return files.flatMap((file) => {
    const name = relative(root, file);
    const doc = parseDocument({ bytes: readFileSync(file), filename: name });
    const documentId = documentIdFor("test", name);
    return chunkDocument(doc, { tokenizer, chunkSize, documentId }).map((c) => ({ id: c.id, documentId, headingPath: c.headingTitles, text: c.text }));
  });
}
