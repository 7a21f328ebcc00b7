/**
 * A tokenizer for technical documentation: identifiers stay findable whole and by their parts.
 *
 * `s3:GetObject`, `us-east-1`, `x-amz-date`, `--max-lora-rank`, `v1.2.3`, `ListBuckets`, `max_tokens` are each one
 * compound term (lowercased, edge punctuation stripped) and also split into their parts (`s3`, `getobject`, `get`,
 * `object`, `us`, `east`, `1`, ...), so a question that writes `GetObject` or "get object" finds the chunk that wrote
 * `s3:GetObject`. Words go through a light English stemmer (plural and -ing/-ed endings) and a small stop list; the
 * same function runs on chunks and on questions, so both sides meet on the same terms.
 */

const STOP_WORDS = new Set(
  (
    "a an and are as at be by can do does for from has have how i if in into is it its of on or should that the " +
    "their them then there these this to was what when where which who why will with you your"
  ).split(" "),
);

/** Runs of letters, digits and the joiners that hold technical identifiers together. */
const COMPOUND = /[\p{L}\p{N}]+(?:[._:/@+#-]+[\p{L}\p{N}]+)*/gu;
const PARTS = /[\p{L}\p{N}]+/gu;
/** camelCase / PascalCase / digit boundaries: GetObjectACL → Get, Object, ACL; ec2Instance → ec2, Instance. */
const CAMEL = /\p{Lu}+(?=\p{Lu}\p{Ll})|\p{Lu}?\p{Ll}+|\p{Lu}+|\p{N}+\p{Ll}*/gu;

/** A light suffix stemmer: enough that "buckets"/"bucket", "encrypted"/"encrypting"/"encrypt" meet. */
export function stem(word: string): string {
  if (word.length <= 3 || /\d/.test(word)) return word;
  if (word.endsWith("ies") && word.length > 4) return `${word.slice(0, -3)}y`;
  if (word.endsWith("sses")) return word.slice(0, -2);
  if (word.endsWith("ing") && word.length > 5) return trimDouble(word.slice(0, -3));
  if (word.endsWith("ed") && word.length > 4) return trimDouble(word.slice(0, -2));
  if (word.endsWith("s") && !word.endsWith("ss") && !word.endsWith("us") && !word.endsWith("is")) return word.slice(0, -1);
  return word;
}

function trimDouble(word: string): string {
  const n = word.length;
  return n > 3 && word[n - 1] === word[n - 2] && !/[lsz]/.test(word[n - 1]!) ? word.slice(0, -1) : word;
}

function addWord(out: string[], word: string): void {
  const lower = word.toLowerCase();
  if (lower.length === 0 || STOP_WORDS.has(lower)) return;
  out.push(stem(lower));
}

/** The terms of a text, in order (a term may repeat: BM25 counts it). */
export function technicalTerms(text: string): string[] {
  const out: string[] = [];
  for (const compound of text.normalize("NFKC").matchAll(COMPOUND)) {
    const whole = compound[0];
    const parts = whole.match(PARTS) ?? [];
    if (parts.length > 1) out.push(whole.toLowerCase());
    for (const part of parts) {
      const pieces = part.match(CAMEL);
      if (pieces !== null && pieces.length > 1 && pieces.join("") === part) {
        out.push(part.toLowerCase());
        for (const piece of pieces) addWord(out, piece);
      } else {
        addWord(out, part);
      }
    }
  }
  return out;
}
