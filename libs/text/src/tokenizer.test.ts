import { seededRandom } from "@ragtune/testing";
import { Tokenizer } from "tokenizers";
import { describe, expect, it } from "vitest";
import { TOKENIZER_NAMES, loadTokenizer, tokenizerFile } from "./tokenizer.js";

const SAMPLES = [
  "",
  " ",
  "a",
  " leading space",
  "trailing space ",
  "\n",
  "line one\nline two\n\n  indented",
  "tabs\tand\u00a0no-break spaces",
  "hello</s>world <s> x <unk>",
  "<|begin_of_text|>hi<|end_of_text|> <think>x</think>",
  "I'm sure it's THEY'LL we'Ve",
  "12345 678 3.14159 0x1F",
  "é café naïve Ünïcödé 中文字符 🙂👍🏽 ﬁ",
  "e\u0301 composed vs é",
  "```ts\nconst x = { a: 1 };\n```",
  "   many     spaces    between   words   ",
  "https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-key.html?x=1&y=2",
];

describe("loadTokenizer", () => {
  const counters = new Map<string, ReturnType<typeof loadTokenizer>>();
  for (const name of TOKENIZER_NAMES) {
    it(`${name}: counts equal the Hugging Face reference tokenizer's`, async () => {
      const reference = Tokenizer.fromFile(tokenizerFile(name));
      const counter = loadTokenizer(name);
      counters.set(name, counter);
      for (const text of SAMPLES) {
        const expected = (await reference.encode(text, null, { addSpecialTokens: false })).getIds().length;
        expect({ text, count: counter.count(text) }).toEqual({ text, count: expected });
      }
    });

    it(`${name}: pieces tile the text and add up to its count`, () => {
      const counter = counters.get(name) ?? loadTokenizer(name);
      const text = "Amazon S3 stores objects.\n\nEach bucket holds objects, and keys\tname them.";
      const { ends, counts } = counter.pieces(text);
      expect(ends[ends.length - 1]).toBe(text.length);
      expect(ends).toEqual([...ends].sort((a, b) => a - b));
      expect(counts.reduce((a, b) => a + b, 0)).toBe(counter.count(text));
    });
  }

  /** One enormous token-less "word": a base64 blob, as a minified script or an inline image holds. */
  const base64Word = (length: number, seed: number): string => {
    const random = seededRandom(seed);
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let out = "";
    for (let i = 0; i < length; i++) out += alphabet[Math.floor(random() * alphabet.length)];
    return out;
  };
  const LONG_WORDS = [
    ["a 300,000-character base64 word", base64Word(300_000, 16)],
    ["a 100,000-character run of one letter", "a".repeat(100_000)],
    ["a 60,000-character run of a repeated pair with accents", "éa".repeat(30_000)],
  ] as const;
  for (const name of TOKENIZER_NAMES) {
    it(`${name}: counts of single words of 100,000–300,000 characters equal the reference's`, async () => {
      const reference = Tokenizer.fromFile(tokenizerFile(name));
      const counter = counters.get(name) ?? loadTokenizer(name);
      for (const [label, word] of LONG_WORDS) {
        const expected = (await reference.encode(word, null, { addSpecialTokens: false })).getIds().length;
        expect({ label, count: counter.count(word) }).toEqual({ label, count: expected });
      }
    });
  }

  it("rejects an unknown tokenizer name", () => {
    expect(() => loadTokenizer("gpt2" as never)).toThrow(/unknown tokenizer "gpt2"/);
  });
});
