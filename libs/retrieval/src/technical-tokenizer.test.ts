import { describe, expect, it } from "vitest";
import { stem, technicalTerms } from "./technical-tokenizer.js";

describe("technicalTerms", () => {
  it("keeps identifiers whole and by their parts", () => {
    const terms = technicalTerms("Allow s3:GetObject in us-east-1 with --max-lora-rank");
    expect(terms).toEqual(expect.arrayContaining(["s3:getobject", "s3", "getobject", "get", "object", "us-east-1", "east", "1", "max-lora-rank", "lora", "rank"]));
  });

  it("meets camelCase and spaced words on the same terms", () => {
    const doc = new Set(technicalTerms("Call ListBuckets to list buckets"));
    for (const t of technicalTerms("list bucket")) expect(doc.has(t)).toBe(true);
  });

  it("drops stop words and stems light suffixes", () => {
    expect(technicalTerms("What is the encrypted bucket?")).toEqual(["encrypt", "bucket"]);
    expect(stem("policies")).toBe("policy");
    expect(stem("running")).toBe("run");
    expect(stem("access")).toBe("access");
    expect(stem("ec2s")).toBe("ec2s");
  });

  it("handles empty, symbols only and a huge single token", () => {
    expect(technicalTerms("")).toEqual([]);
    expect(technicalTerms("--- ::: ...")).toEqual([]);
    expect(technicalTerms("x".repeat(100_000))).toHaveLength(1);
  });
});
