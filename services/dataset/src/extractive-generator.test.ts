import { readdirSync } from "node:fs";
import { join } from "node:path";
import { AWS_CORPUS_DIR, corpusMarkdownFiles } from "@ragtune/testing";
import { describe, expect, it } from "vitest";
import { ingestChunks as ingest, SAMPLE_DOCS } from "../test/sample-chunks.js";
import {
  generateExtractiveDataset,
  generateExtractiveExamples,
  gerundToBase,
  isWellFormedQuestion,
  segmentChunk,
  splitSentences,
  type ExtractiveExample,
  type SourceChunk,
} from "./extractive-generator.js";

function chunk(text: string, headingPath: string[] = ["Guide", "Section"], id = "ch_test"): SourceChunk {
  return { id, documentId: "doc_test", headingPath, text };
}

function questions(examples: readonly ExtractiveExample[]): string[] {
  return examples.map((e) => e.question);
}

function normalized(question: string): string {
  return question.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, " ").trim();
}

/** Everything a generated example must satisfy, whatever the chunk. */
function expectSound(examples: readonly ExtractiveExample[], source: SourceChunk, max = 3): void {
  expect(examples.length).toBeLessThanOrEqual(max);
  const seen = new Set<string>();
  for (const e of examples) {
    expect(e.context).toBe(source.text);
    expect(e.chunkId).toBe(source.id);
    expect(e.documentId).toBe(source.documentId);
    expect(e.headingPath).toEqual(source.headingPath);
    expect(e.generator).toBe("extractive");
    expect(e.answerable).toBe(true);
    expect(["factual", "conceptual", "comparison"]).toContain(e.kind);
    // Verbatim: the answer is the chunk text at answerStart.
    expect(source.text.slice(e.answerStart, e.answerStart + e.answer.length)).toBe(e.answer);
    expect(e.answer.length).toBeGreaterThanOrEqual(20);
    expect(e.answer.length).toBeLessThanOrEqual(600);
    expect(e.answer.trim()).toBe(e.answer);
    expect(e.answer).not.toMatch(/```|^\s*\S+ \| \S+/m);
    expect(isWellFormedQuestion(e.question), e.question).toBe(true);
    expect(normalized(e.question)).not.toContain(normalized(e.answer));
    expect(seen.has(normalized(e.question)), `duplicate question ${e.question}`).toBe(false);
    seen.add(normalized(e.question));
  }
}

describe("question patterns", () => {
  it("definition: 'X is a …' → 'What is X?' answered by the sentence", () => {
    const c = chunk(
      "Journal entries\n\nA journal entry is a group of postings that must balance: the sum of debits equals the sum of credits, per currency. Entries are immutable once committed.",
      ["Overview", "Journal entries"],
    );
    const examples = generateExtractiveExamples(c);
    const definition = examples.find((e) => e.pattern === "definition");
    expect(definition).toMatchObject({
      question: "What is a journal entry?",
      answer: "A journal entry is a group of postings that must balance: the sum of debits equals the sum of credits, per currency.",
      kind: "conceptual",
    });
    expectSound(examples, c);
  });

  it("definition: plural subjects, 'means' and 'refers to'", () => {
    const c = chunk(
      "Internal errors are errors that occur within the Amazon S3 environment.\n\nA negative balance on an asset account means more was credited than debited. The term PII refers to any personally identifiable information in a description.",
      ["Guide", "Terms"],
    );
    expect(questions(generateExtractiveExamples(c, { questionsPerChunk: 5 }))).toEqual(
      expect.arrayContaining([
        "What are internal errors?",
        "What does a negative balance on an asset account mean?",
        "What does the term PII refer to?",
      ]),
    );
  });

  it("purpose: 'X is used to …' → 'What is X used for?'; an acronym in brackets belongs to the subject", () => {
    const c = chunk("Same-Region Replication (SRR) is used to copy objects across Amazon S3 buckets in the same AWS Region.", ["Guide", "Replication"]);
    expect(generateExtractiveExamples(c)).toMatchObject([
      { question: "What is Same-Region Replication (SRR) used for?", answer: c.text, pattern: "purpose", kind: "factual" },
    ]);
  });

  it("heading: a gerund heading becomes 'How do you …?' answered by the first explanatory sentence", () => {
    const c = chunk(
      "Configuring TLS\n\nThe server reads the certificate and key from the files named by `LEDGER_TLS_CERT` and `LEDGER_TLS_KEY`. It reloads both on SIGHUP.",
      ["Security", "Configuring TLS"],
    );
    const examples = generateExtractiveExamples(c);
    expect(examples.find((e) => e.pattern === "heading-procedure")).toMatchObject({
      question: "How do you configure TLS?",
      answer: "The server reads the certificate and key from the files named by `LEDGER_TLS_CERT` and `LEDGER_TLS_KEY`.",
    });
    expectSound(examples, c);
  });

  it("heading: a question heading is asked as is and answered by the first sentences (a short 'No.' is extended)", () => {
    const c = chunk(
      "Can I delete or edit an entry?\n\nNo. Committed entries are immutable and kept for ten years. To correct a mistake, reverse the entry and post a new one.",
      ["FAQ", "Can I delete or edit an entry?"],
    );
    const examples = generateExtractiveExamples(c);
    expect(examples[0]).toMatchObject({
      pattern: "heading-question",
      question: "Can I delete or edit an entry?",
      answer: "No. Committed entries are immutable and kept for ten years.",
      kind: "factual",
    });
    expect(examples.find((e) => e.pattern === "procedure")).toMatchObject({
      question: "How do you correct a mistake?",
      answer: "To correct a mistake, reverse the entry and post a new one.",
    });
  });

  it("heading: a problem under Troubleshooting and any other heading ('What does the section … say about …?')", () => {
    const problem = chunk(
      "Port 8443 is already in use\n\nAnother process holds the port. Find it with `ss -ltnp` or set `LEDGER_LISTEN` to another address.",
      ["Troubleshooting", "Startup problems", "Port 8443 is already in use"],
    );
    expect(generateExtractiveExamples(problem)[0]).toMatchObject({
      pattern: "heading-problem",
      question: "What should you do when port 8443 is already in use?",
      answer: "Another process holds the port. Find it with `ss -ltnp` or set `LEDGER_LISTEN` to another address.",
    });
    const topic = chunk(
      "Pagination\n\nList endpoints return at most `page_size` items and a `next_page_token`.",
      ["API Reference", "Conventions", "Pagination"],
    );
    expect(questions(generateExtractiveExamples(topic))).toContain('What does the section "Pagination" say about list endpoints?');
  });

  it("enumeration: 'X offers the following Y:' + a list → 'Which Y does X offer?' answered by the list", () => {
    const c = chunk(
      "Amazon S3 standard storage offers the following features:\n\n- Backed with the Amazon S3 Service Level Agreement\n- Designed to sustain the concurrent loss of data in two facilities\n\nThe following rules apply for naming S3 buckets:\n\n- Bucket names must be between 3 and 63 characters long.\n- Bucket names must begin and end with a letter or number.",
      ["Guide", "Storage"],
    );
    const examples = generateExtractiveExamples(c);
    const enumerations = examples.filter((e) => e.pattern === "enumeration").sort((a, b) => a.answerStart - b.answerStart);
    expect(enumerations.map((e) => [e.question, e.answer])).toEqual([
      [
        "Which features does Amazon S3 standard storage offer?",
        "Backed with the Amazon S3 Service Level Agreement\n- Designed to sustain the concurrent loss of data in two facilities",
      ],
      [
        "Which rules apply for naming S3 buckets?",
        "Bucket names must be between 3 and 63 characters long.\n- Bucket names must begin and end with a letter or number.",
      ],
    ]);
    expectSound(examples, c);
  });

  it("procedure, condition and quantity sentences", () => {
    const c = chunk(
      "To rotate the certificate, replace the file and send SIGHUP to the server. If Amazon S3 returns an InternalError response, retry the request. A book holds at most 200 bindings. Page tokens stay valid for 24 hours.",
      ["Guide", "Operations"],
    );
    expect(questions(generateExtractiveExamples(c, { questionsPerChunk: 6 })).sort()).toEqual([
      "How do you rotate the certificate?",
      "How long do page tokens stay valid?",
      "How many bindings does a book hold?",
      "What should you do if Amazon S3 returns an InternalError response?",
    ]);
  });

  it("comparison: two contrasting subjects in one sentence or two adjacent definitions", () => {
    const releases = chunk(
      "A minor release adds features and keeps the API compatible; a major release may remove deprecated features after six months of notice.",
      ["Release Notes"],
    );
    expect(generateExtractiveExamples(releases).find((e) => e.kind === "comparison")).toMatchObject({
      question: "What is the difference between a minor release and a major release?",
      answer: releases.text,
      pattern: "comparison",
    });
    const definitions = chunk(
      "A bucket is a container for objects stored in Amazon S3. An object is a file and any metadata that describes the file.",
      ["Guide", "Concepts"],
    );
    const comparison = generateExtractiveExamples(definitions).find((e) => e.kind === "comparison");
    expect(comparison?.question).toBe("What is the difference between a bucket and an object?");
    expect(comparison?.answer).toBe(definitions.text);
  });

  it("code-subject: '`command` does …' → 'What does `command` do?'", () => {
    const c = chunk("`ledgerctl export` writes the entries of a book to a file.", ["FAQ", "Tools"]);
    expect(generateExtractiveExamples(c)).toMatchObject([{ question: "What does `ledgerctl export` do?", pattern: "code-subject", kind: "factual" }]);
  });
});

describe("what is skipped", () => {
  it("takes nothing from code blocks, tables, URL-only lines and image placeholders", () => {
    const c = chunk(
      [
        "```bash",
        "# A bucket is a container for objects stored in Amazon S3.",
        "To delete a bucket, run aws s3 rb s3://bucket --force.",
        "```",
        "",
        "setting | default | meaning",
        "server.listen | 0.0.0.0:8443 | A listen address is the address of the API.",
        "",
        "https://docs.aws.amazon.com/AmazonS3/latest/dev/Welcome.html",
        "",
        "[Image NOT FOUND]",
      ].join("\n"),
      ["Guide", "Reference"],
    );
    expect(generateExtractiveExamples(c)).toEqual([]);
    expect(segmentChunk(c.text).map((b) => b.kind)).toEqual(["code", "table", "other", "other"]);
  });

  it("skips pointers elsewhere, list intros and answers under the minimum length", () => {
    const c = chunk(
      "To learn more about buckets, see Working with buckets. For more information about keys, see Object keys. A key is a name. To configure an index document, follow the steps below.",
      ["Guide", "Pointers"],
    );
    expect(generateExtractiveExamples(c)).toEqual([]);
  });

  it("skips questions that would lean on a pronoun or a vague condition", () => {
    const c = chunk("If it fails, the server retries the request once. When you do, the bucket owner pays. To do this, run the command again.", ["Guide", "Vague"]);
    expect(generateExtractiveExamples(c)).toEqual([]);
  });

  it("honours maxAnswerChars and minAnswerChars", () => {
    const c = chunk(
      "A journal entry is a group of postings that must balance: the sum of debits equals the sum of credits, per currency. A book is a set of accounts.",
      ["Overview", "Concepts"],
    );
    const short = generateExtractiveExamples(c, { maxAnswerChars: 40 });
    expect(short.map((e) => e.answer)).toEqual(["A book is a set of accounts."]);
    expect(generateExtractiveExamples(c, { minAnswerChars: 200 })).toEqual([]);
  });
});

describe("selection", () => {
  const many = chunk(
    [
      "A bucket is a container for objects stored in Amazon S3.",
      "",
      "A key is the unique identifier for an object within a bucket.",
      "",
      "A region is the geographical area where Amazon S3 stores a bucket.",
      "",
      "An access point is a named network endpoint that is attached to a bucket.",
      "",
      "A prefix is the leading part of a key name up to a delimiter.",
    ].join("\n"),
    ["Guide", "Concepts"],
  );

  it("returns at most questionsPerChunk examples (default 3)", () => {
    expect(generateExtractiveExamples(many)).toHaveLength(3);
    expect(generateExtractiveExamples(many, { questionsPerChunk: 1 })).toHaveLength(1);
    expect(generateExtractiveExamples(many, { questionsPerChunk: 20 }).length).toBeGreaterThanOrEqual(5);
  });

  it("is deterministic, and the seed picks among equally good candidates", () => {
    expect(generateExtractiveExamples(many, { seed: 7 })).toEqual(generateExtractiveExamples(many, { seed: 7 }));
    const firstPicks = new Set<string>();
    for (let seed = 0; seed < 20; seed++) firstPicks.add(generateExtractiveExamples(many, { seed, questionsPerChunk: 1 })[0]!.question);
    expect(firstPicks.size).toBeGreaterThan(1);
  });

  it("gives content-addressed IDs: the same chunk, question and answer give the same ID", () => {
    const a = generateExtractiveExamples(many, { questionsPerChunk: 20 });
    const b = generateExtractiveExamples({ ...many }, { questionsPerChunk: 20, seed: 99 });
    const idOf = (examples: ExtractiveExample[], q: string): string | undefined => examples.find((e) => e.question === q)?.id;
    expect(idOf(b, "What is a key?")).toBe(idOf(a, "What is a key?"));
    expect(new Set(a.map((e) => e.id)).size).toBe(a.length);
    expect(generateExtractiveExamples({ ...many, id: "ch_other" })[0]!.id).not.toBe(a.find((e) => e.question === generateExtractiveExamples({ ...many, id: "ch_other" })[0]!.question)!.id);
  });

  it("rejects options out of range with the option's name", () => {
    expect(() => generateExtractiveExamples(many, { questionsPerChunk: 0 })).toThrow(/questionsPerChunk/);
    expect(() => generateExtractiveExamples(many, { questionsPerChunk: 2.5 })).toThrow(/questionsPerChunk/);
    expect(() => generateExtractiveExamples(many, { minAnswerChars: 50, maxAnswerChars: 10 })).toThrow(/maxAnswerChars/);
    expect(() => generateExtractiveDataset([], { seed: 1.5 })).toThrow(/seed/);
  });
});

describe("hostile input", () => {
  it("returns quietly for empty, binary, one enormous token, deep brackets and a huge chunk", () => {
    const inputs = [
      "",
      "\u0000\u0001\u0002\uFFFD".repeat(1000),
      "a".repeat(200_000),
      "(".repeat(50_000) + "A bucket is a container." + ")".repeat(50_000),
      "`".repeat(10_001),
      "A bucket is a container for objects stored in Amazon S3. ".repeat(20_000),
      "- item\n".repeat(20_000),
    ];
    for (const text of inputs) {
      const c = chunk(text);
      const examples = generateExtractiveExamples(c);
      expectSound(examples, c);
    }
  });
});

describe("helpers", () => {
  it("gerundToBase restores base forms", () => {
    const cases: Record<string, string> = {
      Configuring: "configure", Creating: "create", Deleting: "delete", Installing: "install", Stopping: "stop",
      Starting: "start", Using: "use", Managing: "manage", Enabling: "enable", Setting: "set", Running: "run",
      Working: "work", Getting: "get", Accessing: "access", Specifying: "specify", Invoking: "invoke", Retrieving: "retrieve",
      Uploading: "upload", Hosting: "host", Writing: "write", Editing: "edit", Listening: "listen", Monitoring: "monitor",
      Reducing: "reduce", Protecting: "protect", Providing: "provide", Including: "include", Optimizing: "optimize",
      Sharing: "share", Transitioning: "transition", Estimating: "estimate", Scheduling: "schedule", Requiring: "require",
    };
    for (const [gerund, base] of Object.entries(cases)) expect(gerundToBase(gerund), gerund).toBe(base);
    expect(gerundToBase("Bucket")).toBeUndefined();
  });

  it("splitSentences does not split after abbreviations, initials, inside code or brackets", () => {
    const text = "Use a region, e.g. Frankfurt. Buckets in US East (N. Virginia) were different. Run `a. B` now! Done?";
    const spans = splitSentences(text, 0, text.length).map((s) => text.slice(s.start, s.end));
    expect(spans).toEqual(["Use a region, e.g. Frankfurt.", "Buckets in US East (N. Virginia) were different.", "Run `a. B` now!", "Done?"]);
  });

  it("isWellFormedQuestion rejects fragments", () => {
    expect(isWellFormedQuestion("What is a journal entry?")).toBe(true);
    for (const q of ["What is it?", "What is the?", "What does `x do?", "Which points (of?", "journal entry", "What is?"]) {
      expect(isWellFormedQuestion(q), q).toBe(false);
    }
  });
});

describe("on real documentation", () => {
  const sampleFiles = readdirSync(SAMPLE_DOCS).sort().map((f) => join(SAMPLE_DOCS, f));
  const sample = ingest(SAMPLE_DOCS, sampleFiles, 256);
  // A slice of the AWS corpus: every third page of both guides.
  const aws = ingest(AWS_CORPUS_DIR, corpusMarkdownFiles(AWS_CORPUS_DIR).filter((_, i) => i % 3 === 0), 512);

  for (const [name, chunks] of [["the sample docs", sample], ["the AWS corpus slice", aws]] as const) {
    it(`${name}: questions for most chunks, every answer verbatim, every question sound`, () => {
      expect(chunks.length).toBeGreaterThan(50);
      const examples = generateExtractiveDataset(chunks);
      const byChunk = new Map<string, ExtractiveExample[]>();
      for (const e of examples) byChunk.set(e.chunkId, [...(byChunk.get(e.chunkId) ?? []), e]);
      for (const c of chunks) expectSound(byChunk.get(c.id) ?? [], c);
      expect(byChunk.size / chunks.length).toBeGreaterThanOrEqual(0.7);
      expect(new Set(examples.map((e) => e.id)).size).toBe(examples.length);
      expect(generateExtractiveDataset(chunks)).toEqual(examples);
    });
  }

  it("uses every pattern and all three answerable kinds over both collections", () => {
    const examples = generateExtractiveDataset([...sample, ...aws]);
    expect(new Set(examples.map((e) => e.pattern))).toEqual(
      new Set([
        "definition", "code-subject", "quantity", "procedure", "condition", "comparison", "enumeration",
        "heading-question", "heading-procedure", "heading-problem", "heading-topic",
      ]),
    );
    expect(new Set(examples.map((e) => e.kind))).toEqual(new Set(["factual", "conceptual", "comparison"]));
  });
});
