/**
 * A tokenizer for technical documentation: identifiers stay findable whole and by their parts.
 *
 * `s3:GetObject`, `us-east-1`, `x-amz-date`, `--max-lora-rank`, `v1.2.3`, `ListBuckets`, `max_tokens` are each one
 * compound term (lowercased, edge punctuation stripped) and also split into their parts (`s3`, `getobject`, `get`,
 * `object`, `us`, `east`, `1`, ...), so a question that writes `GetObject` or "get object" finds the chunk that wrote
 * `s3:GetObject`. Words are kept as written (lowercased): no stemming and no stop list, which measured worse on the
 * dataset's questions (tools/bench/gateway.ts). The same function runs on chunks and on questions.
 */

/** Runs of letters, digits and the joiners that hold technical identifiers together. */
const COMPOUND = /[\p{L}\p{N}]+(?:[._:/@+#-]+[\p{L}\p{N}]+)*/gu;
const PARTS = /[\p{L}\p{N}]+/gu;
/** camelCase / PascalCase / digit boundaries: GetObjectACL → Get, Object, ACL; ec2Instance → ec2, Instance. */
const CAMEL = /\p{Lu}+(?=\p{Lu}\p{Ll})|\p{Lu}?\p{Ll}+|\p{Lu}+|\p{N}+\p{Ll}*/gu;

/** The terms of a text, in order (a term may repeat: BM25 counts it). */
export function technicalTerms(text: string): string[] {
  const out: string[] = [];
  for (const compound of text.normalize("NFKC").matchAll(COMPOUND)) {
    const whole = compound[0];
    const parts = whole.match(PARTS) ?? [];
    if (parts.length > 1) out.push(whole.toLowerCase());
    for (const part of parts) {
      out.push(part.toLowerCase());
      const pieces = part.match(CAMEL);
      if (pieces !== null && pieces.length > 1 && pieces.join("") === part) for (const piece of pieces) out.push(piece.toLowerCase());
    }
  }
  return out;
}
