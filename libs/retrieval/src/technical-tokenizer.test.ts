import { describe, expect, it } from "vitest";
import { technicalTerms } from "./technical-tokenizer.js";

describe("technicalTerms", () => {
  it("keeps identifiers whole and by their parts", () => {
    const terms = technicalTerms("Allow s3:GetObject in us-east-1 with --max-lora-rank");
    expect(terms).toEqual(expect.arrayContaining(["s3:getobject", "s3", "getobject", "get", "object", "us-east-1", "east", "1", "max-lora-rank", "lora", "rank"]));
  });

  it("meets camelCase and spaced words on the same terms", () => {
    const doc = new Set(technicalTerms("Call ListBuckets to list buckets"));
    for (const t of technicalTerms("list buckets")) expect(doc.has(t)).toBe(true);
  });

  it("lowercases words as written", () => {
    expect(technicalTerms("What is the Encrypted bucket?")).toEqual(["what", "is", "the", "encrypted", "bucket"]);
  });

  it("handles empty, symbols only and a huge single token", () => {
    expect(technicalTerms("")).toEqual([]);
    expect(technicalTerms("--- ::: ...")).toEqual([]);
    expect(technicalTerms("x".repeat(100_000))).toHaveLength(1);
  });
});
