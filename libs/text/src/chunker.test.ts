import { seededRandom } from "@ragtune/testing";
import { Tokenizer } from "tokenizers";
import { beforeAll, describe, expect, it } from "vitest";
import { chunkDocument, diffChunks, documentIdFor, type Chunk } from "./chunker.js";
import { parseDocument } from "./parse.js";
import { loadTokenizer, tokenizerFile, type TokenCounter } from "./tokenizer.js";

let mistral: TokenCounter;
beforeAll(() => {
  mistral = loadTokenizer("mistral");
});

const sentence = (topic: string, i: number): string =>
  `The ${topic} service keeps record ${i} in the ledger and replicates it to two standby nodes before acknowledging.`;
const paragraph = (topic: string, n: number): string => Array.from({ length: n }, (_, i) => sentence(topic, i)).join(" ");

const GUIDE = `# Ledger Guide

${paragraph("intro", 3)}

## Setup

${paragraph("setup", 40)}

${paragraph("setup-more", 25)}

## Configuration

${paragraph("config", 8)}

### Ports

${paragraph("ports", 30)}

## Troubleshooting

${paragraph("trouble", 12)}
`;

function chunk(text: string, documentId: string, chunkSize = 128, overlap = 0): Chunk[] {
  return chunkDocument(parseDocument({ text, filename: "guide.md" }), { tokenizer: mistral, chunkSize, overlap, documentId });
}

describe("chunkDocument", () => {
  it("keeps every chunk within the budget with exact counts and offsets into the text", () => {
    const doc = parseDocument({ text: GUIDE, filename: "guide.md" });
    const chunks = chunkDocument(doc, { tokenizer: mistral, chunkSize: 128, documentId: "d1" });
    expect(chunks.length).toBeGreaterThan(10);
    for (const c of chunks) {
      expect(c.tokenCount).toBeLessThanOrEqual(128);
      expect(c.tokenCount).toBe(mistral.count(c.text));
      expect(doc.text.slice(c.charStart, c.charEnd)).toBe(c.text);
    }
    expect(chunks.map((c) => c.ordinal)).toEqual(chunks.map((_, i) => i));
  });

  it("labels chunks with their heading path and never spans two sections", () => {
    const chunks = chunk(GUIDE, "d1");
    const paths = [...new Set(chunks.map((c) => c.headingPath))];
    expect(paths).toEqual([
      "Ledger Guide",
      "Ledger Guide > Setup",
      "Ledger Guide > Configuration",
      "Ledger Guide > Configuration > Ports",
      "Ledger Guide > Troubleshooting",
    ]);
    for (const c of chunks.filter((c) => c.headingPath.endsWith("Ports"))) expect(c.text).not.toContain("trouble");
  });

  it("splits an over-long word by tokens", () => {
    const blob = "x".repeat(3000);
    const chunks = chunk(`# Blob\n\n${blob}`, "d1", 64);
    expect(chunks.every((c) => c.tokenCount <= 64 && c.tokenCount === mistral.count(c.text))).toBe(true);
    expect(chunks.map((c) => c.text).join("").replace(/^Blob\s*/, "")).toBe(blob);
  });

  it("repeats up to `overlap` tokens of the previous chunk of the same section", () => {
    const chunks = chunk(GUIDE, "d1", 128, 32);
    const setup = chunks.filter((c) => c.headingPath === "Ledger Guide > Setup");
    expect(setup.length).toBeGreaterThan(3);
    for (let i = 1; i < setup.length; i++) {
      expect(setup[i]!.charStart).toBeLessThan(setup[i - 1]!.charEnd);
      expect(mistral.count(setup[i - 1]!.text.slice(setup[i]!.charStart - setup[i - 1]!.charStart))).toBeLessThanOrEqual(33);
      expect(setup[i]!.tokenCount).toBeLessThanOrEqual(128);
    }
  });

  it("gives the same IDs when the same document is ingested twice", () => {
    expect(chunk(GUIDE, "d1").map((c) => c.id)).toEqual(chunk(GUIDE, "d1").map((c) => c.id));
  });

  it("gives different IDs to identical text in different documents and collections", () => {
    const a = chunk(GUIDE, documentIdFor("team-a", "docs/guide.md"));
    const b = chunk(GUIDE, documentIdFor("team-b", "docs/guide.md"));
    const c = chunk(GUIDE, documentIdFor("team-a", "docs/copy-of-guide.md"));
    const ids = [...a, ...b, ...c].map((x) => x.id);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("gives different IDs to identical sections within one document", () => {
    const twice = `# A\n\n## Example\n\nSame words here.\n\n## Example\n\nSame words here.\n`;
    const ids = chunk(twice, "d1").map((c) => c.id);
    expect(ids.length).toBe(2);
    expect(new Set(ids).size).toBe(2);
  });

  it("editing one section changes only that section's chunks", () => {
    const before = chunk(GUIDE, "d1");
    const edited = GUIDE.replace(sentence("config", 3), "The configuration file lives in /etc/ledger/ledger.toml.");
    const after = chunk(edited, "d1");
    const diff = diffChunks(before.map((c) => c.id), after);
    const changedPaths = new Set([...diff.added.map((c) => c.headingPath)]);
    expect(changedPaths).toEqual(new Set(["Ledger Guide > Configuration"]));
    const removedPaths = new Set(before.filter((c) => diff.removed.includes(c.id)).map((c) => c.headingPath));
    expect(removedPaths).toEqual(new Set(["Ledger Guide > Configuration"]));
    expect(diff.kept.length).toBe(before.length - diff.removed.length);
    expect(diff.kept.length).toBeGreaterThan(10);
  });

  it("inserting a section keeps every other chunk ID", () => {
    const before = chunk(GUIDE, "d1");
    const inserted = GUIDE.replace("## Troubleshooting", `## Upgrades\n\n${paragraph("upgrade", 4)}\n\n## Troubleshooting`);
    const diff = diffChunks(before.map((c) => c.id), chunk(inserted, "d1"));
    expect(diff.removed).toEqual([]);
    expect(new Set(diff.added.map((c) => c.headingPath))).toEqual(new Set(["Ledger Guide > Upgrades"]));
  });

  it("rejects bad options", () => {
    const doc = parseDocument({ text: GUIDE, filename: "g.md" });
    expect(() => chunkDocument(doc, { tokenizer: mistral, chunkSize: 4, documentId: "d" })).toThrow(/chunkSize/);
    expect(() => chunkDocument(doc, { tokenizer: mistral, chunkSize: 64, overlap: 40, documentId: "d" })).toThrow(/overlap/);
    expect(() => chunkDocument(doc, { tokenizer: mistral, documentId: "" })).toThrow(/documentId/);
  });
});

/** Wraps a counter and records every text it is asked to tokenize. */
function recording(inner: TokenCounter): { counter: TokenCounter; seen: string[] } {
  const seen: string[] = [];
  const counter: TokenCounter = {
    name: inner.name,
    file: inner.file,
    count: (text) => {
      seen.push(text);
      return inner.count(text);
    },
    pieces: (text) => {
      seen.push(text);
      return inner.pieces(text);
    },
  };
  return { counter, seen };
}

describe("chunkDocument with the previous version's chunks", () => {
  const parse = (text: string) => parseDocument({ text, filename: "guide.md" });
  const sectionText = (text: string, path: string): string => {
    const doc = parse(text);
    const section = doc.sections.find((s) => s.headingPath.join(" > ") === path)!;
    return doc.text.slice(section.charStart, section.charEnd);
  };
  const rechunk = (text: string, previous: readonly Chunk[], chunkSize = 128, overlap = 0, documentId = "d1") => {
    const { counter, seen } = recording(mistral);
    const chunks = chunkDocument(parse(text), { tokenizer: counter, chunkSize, overlap, documentId, previous });
    return { chunks, seen };
  };

  it("tokenizes only the edited section and gives exactly the chunks of a full re-chunk", () => {
    const before = chunk(GUIDE, "d1");
    const edited = GUIDE.replace(sentence("config", 3), "The configuration file lives in /etc/ledger/ledger.toml.");
    const { chunks, seen } = rechunk(edited, before);
    expect(chunks).toEqual(chunk(edited, "d1"));
    const changed = sectionText(edited, "Ledger Guide > Configuration");
    expect(seen.length).toBeGreaterThan(0);
    for (const text of seen) expect(changed.includes(text), `tokenized outside the edited section: ${text.slice(0, 60)}`).toBe(true);
    expect(seen).toContain(changed);
  });

  it("moves reused chunks to their new offsets and ordinals when a section is inserted before them", () => {
    const before = chunk(GUIDE, "d1");
    const inserted = GUIDE.replace("## Setup", `## Upgrades\n\n${paragraph("upgrade", 14)}\n\n## Setup`);
    const { chunks, seen } = rechunk(inserted, before);
    const full = chunk(inserted, "d1");
    expect(chunks).toEqual(full);
    const upgrades = sectionText(inserted, "Ledger Guide > Upgrades");
    for (const text of seen) expect(upgrades.includes(text)).toBe(true);
    const moved = full.filter((c) => c.headingPath.endsWith("Ports"));
    const old = before.filter((c) => c.headingPath.endsWith("Ports"));
    expect(moved.map((c) => c.id)).toEqual(old.map((c) => c.id));
    expect(moved[0]!.charStart).toBeGreaterThan(old[0]!.charStart);
    expect(moved[0]!.ordinal).toBeGreaterThan(old[0]!.ordinal);
  });

  it("does not tokenize an unchanged document at all, with overlap, identical sections and shuffled input", () => {
    const text = `${GUIDE}\n## Example\n\n${paragraph("same", 9)}\n\n## Example\n\n${paragraph("same", 9)}\n`;
    const before = chunk(text, "d1", 128, 32);
    const shuffled = [...before].reverse();
    const { chunks, seen } = rechunk(text, shuffled, 128, 32);
    expect(chunks).toEqual(before);
    expect(seen).toEqual([]);
  });

  it("re-chunks everything when the options or the document differ", () => {
    const before = chunk(GUIDE, "d1", 128);
    for (const [chunkSize, documentId] of [[256, "d1"], [128, "d2"]] as const) {
      const { chunks, seen } = rechunk(GUIDE, before, chunkSize, 0, documentId);
      expect(chunks).toEqual(chunk(GUIDE, documentId, chunkSize));
      expect(seen).toContain(sectionText(GUIDE, "Ledger Guide > Setup"));
      expect(seen).toContain(sectionText(GUIDE, "Ledger Guide > Troubleshooting"));
    }
  });

  it("re-chunks a section whose previous chunks are incomplete or do not match their IDs", () => {
    const before = chunk(GUIDE, "d1");
    const setup = before.filter((c) => c.headingPath === "Ledger Guide > Setup");
    expect(setup.length).toBeGreaterThan(2);
    const missing = before.filter((c) => c !== setup[1]);
    const tampered = before.map((c) => (c === setup[setup.length - 1] ? { ...c, tokenCount: c.tokenCount + 1, text: `${c.text} ` } : c));
    for (const previous of [missing, tampered]) {
      const { chunks, seen } = rechunk(GUIDE, previous);
      expect(chunks).toEqual(before);
      expect(seen).toContain(sectionText(GUIDE, "Ledger Guide > Setup"));
      for (const text of seen) expect(sectionText(GUIDE, "Ledger Guide > Setup").includes(text)).toBe(true);
    }
  });
});

describe("chunkDocument on hostile input", () => {
  it("splits a 300,000-character word into chunks within the budget whose counts equal the reference's", async () => {
    const random = seededRandom(300);
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let word = "";
    for (let i = 0; i < 300_000; i++) word += alphabet[Math.floor(random() * alphabet.length)];
    const doc = parseDocument({ text: `# Inline image\n\n${word}\n`, filename: "blob.md" });
    const chunks = chunkDocument(doc, { tokenizer: mistral, chunkSize: 512, documentId: "blob" });
    const body = chunks.filter((c) => c.text !== "Inline image");
    expect(body.map((c) => c.text).join("")).toBe(word);
    const reference = Tokenizer.fromFile(tokenizerFile("mistral"));
    const encodings = await reference.encodeBatch(chunks.map((c) => c.text), { addSpecialTokens: false });
    expect(chunks.filter((c, i) => encodings[i]!.getIds().length !== c.tokenCount)).toEqual([]);
    expect(Math.max(...chunks.map((c) => c.tokenCount))).toBeLessThanOrEqual(512);
    // Cuts are the longest prefixes that fit: every chunk but the last is full up to a token or two.
    expect(Math.min(...body.slice(0, -1).map((c) => c.tokenCount))).toBeGreaterThanOrEqual(505);
  });

  it("chunks a paragraph of 200,000 words on one line (no stack overflow), covering every word in order", () => {
    const random = seededRandom(200);
    const vocabulary = ["ledger", "replica", "bucket", "the", "of", "writes", "and", "node", "keys", "stores"];
    const words = Array.from({ length: 200_000 }, () => vocabulary[Math.floor(random() * vocabulary.length)]!);
    const doc = parseDocument({ text: `# Log\n\n${words.join(" ")}\n`, filename: "log.md" });
    const chunks = chunkDocument(doc, { tokenizer: mistral, chunkSize: 512, documentId: "log" });
    expect(chunks.length).toBeGreaterThan(100);
    for (const c of chunks) expect(c.tokenCount).toBeLessThanOrEqual(512);
    expect(chunks.flatMap((c) => c.text.split(/\s+/)).filter((w) => w !== "Log")).toEqual(words);
  });
});

describe("diffChunks", () => {
  it("sorts chunks into added, kept and removed", () => {
    const chunks = chunk(GUIDE, "d1").slice(0, 3);
    const diff = diffChunks(["gone", chunks[0]!.id], chunks);
    expect(diff.kept.map((c) => c.id)).toEqual([chunks[0]!.id]);
    expect(diff.added.map((c) => c.id)).toEqual([chunks[1]!.id, chunks[2]!.id]);
    expect(diff.removed).toEqual(["gone"]);
  });
});
