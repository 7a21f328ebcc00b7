import { readdirSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The real AWS documentation corpus (Markdown, CC BY-SA 4.0) that tests and benchmarks read: `../shared/corpus/aws-docs`
 * beside the repository checkout, or `RAGTUNE_CORPUS_DIR`.
 */
export const AWS_CORPUS_DIR = resolve(
  process.env.RAGTUNE_CORPUS_DIR ?? join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..", "shared", "corpus", "aws-docs"),
);

/** The corpus's Markdown pages under `dir`, recursively and sorted; SOURCE.md provenance files are not corpus content. */
export function corpusMarkdownFiles(dir: string = AWS_CORPUS_DIR): string[] {
  return readdirSync(dir)
    .flatMap((name) => {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) return corpusMarkdownFiles(path);
      return name.endsWith(".md") && name !== "SOURCE.md" ? [path] : [];
    })
    .sort();
}
