import { describe, expect, it } from "vitest";
import { DocumentParseError, detectMediaType, parseDocument } from "./parse.js";

const MARKDOWN = `---
title: Acme Guide
tags: [a, b]
---

Intro before any heading.

Guide
=====

Setext top level.

## Install

Run the [installer](https://example.com/install) now.

\`\`\`bash
# not a heading
make install
\`\`\`

### On Linux

Sub-section text with \`code\`.

Config
------

| key | default |
| --- | ------- |
| port | 8080 |

# Second

- one
  - nested
- two
`;

const HTML = `<!doctype html><html lang="en"><head><title>Acme HTML</title>
<meta name="description" content="About Acme"><style>p{}</style></head><body>
<header><h1>Site chrome</h1></header>
<nav><a href="/">Home</a></nav>
<div class="breadcrumbs"><a>Docs</a> &gt; <a>Guide</a></div>
<main>
<h1>Guide</h1><p>Intro
 paragraph.</p>
<h2>Install</h2><p>Install it.</p>
<h3>Linux</h3><ul><li>apt<ul><li>deb</li></ul></li><li>rpm</li></ul>
<h2>Reference</h2>
<table><tr><th>key</th><th>default</th></tr><tr><td>port</td><td>8080</td></tr></table>
<pre><code class="language-js">if (x) {
  run();
}</code></pre>
<div role="navigation">Prev | Next</div>
<aside>Related</aside>
</main>
<footer>Copyright</footer><script>track()</script>
</body></html>`;

function paths(doc: ReturnType<typeof parseDocument>): string[] {
  return doc.sections.map((s) => s.headingPath.join(" > "));
}

describe("parseDocument: Markdown", () => {
  const doc = parseDocument({ text: MARKDOWN, filename: "guide.md" });

  it("reads front matter as metadata and title", () => {
    expect(doc.title).toBe("Acme Guide");
    expect(doc.metadata).toEqual({ title: "Acme Guide", tags: ["a", "b"] });
    expect(doc.text).not.toContain("title:");
  });

  it("builds heading paths from ATX and setext headings; # in a code fence is not a heading", () => {
    expect(paths(doc)).toEqual(["", "Guide", "Guide > Install", "Guide > Install > On Linux", "Guide > Config", "Second"]);
    const install = doc.sections[2]!;
    expect(doc.text.slice(install.charStart, install.charEnd)).toContain("# not a heading");
  });

  it("keeps code fences intact, links as text, tables as rows", () => {
    expect(doc.text).toContain("```bash\n# not a heading\nmake install\n```");
    expect(doc.text).toContain("Run the installer now.");
    expect(doc.text).not.toContain("https://example.com");
    expect(doc.text).toContain("key | default\nport | 8080");
    expect(doc.text).toContain("- one\n  - nested\n- two");
  });

  it("sections cover their heading and body", () => {
    const linux = doc.sections[3]!;
    expect(doc.text.slice(linux.charStart, linux.charEnd)).toBe("On Linux\n\nSub-section text with `code`.");
  });
});

describe("parseDocument: Markdown front matter and edge cases", () => {
  const parse = (text: string) => parseDocument({ text, filename: "edge.md" });

  it("reads front matter with CRLF line ends and trailing spaces on the fences", () => {
    const doc = parse("--- \r\ntitle: Windows\r\n---\t\r\n# Heading\r\n\r\nBody.\r\n");
    expect(doc.metadata).toEqual({ title: "Windows" });
    expect(doc.text).toBe("Heading\n\nBody.");
  });

  it("takes an empty front matter block as no metadata, and drops TOML front matter", () => {
    expect(parse("---\n---\n# T\n\nx\n").metadata).toEqual({});
    const toml = parse("+++\ntitle = 'x'\n+++\n# T\n\nx\n");
    expect(toml.metadata).toEqual({});
    expect(toml.text).toBe("T\n\nx");
  });

  it("reads a --- block that is not at the start, or never closed, as Markdown", () => {
    const unclosed = parse("---\ntitle: A\n\n# T\n");
    expect(unclosed.metadata).toEqual({});
    expect(unclosed.text).toContain("title: A");
    const late = parse("Intro\n\n---\nkey: v\n---\n");
    expect(late.metadata).toEqual({});
    expect(late.sections.map((s) => s.headingPath.join(" > "))).toEqual(["", "key: v"]);
  });

  it("renders block quotes, ordered lists from their start, task boxes, hard breaks, images and raw HTML as text", () => {
    const doc = parse(
      "> quoted *text*\n\n3. three\n4. four\n\n- [X] done\n- [ ] open\n\nline  \nbreak ![a **diagram**](d.png) <b>bold</b> &amp; `a  b`\n\n<div>\nblock <i>html</i>\n</div>\n",
    );
    expect(doc.text).toBe("quoted text\n\n3. three\n4. four\n\n- [x] done\n- [ ] open\n\nline\nbreak a diagram bold & `a b`\n\nblock html");
  });

  it("writes table rows without the padding cells of short rows", () => {
    expect(parse("| a | b | c |\n|---|---|---|\n| 1 | 2 |\n| x \\| y | z | w |\n").text).toBe("a | b | c\n1 | 2\nx | y | z | w");
  });
});

describe("parseDocument: HTML", () => {
  const doc = parseDocument({ text: HTML, filename: "guide.html" });

  it("drops boilerplate: script, style, nav, header, footer, aside, breadcrumbs, role=navigation", () => {
    for (const chrome of ["Site chrome", "Home", "Docs", "Prev | Next", "Related", "Copyright", "track()", "p{}"]) {
      expect(doc.text).not.toContain(chrome);
    }
  });

  it("keeps h1–h6 as the heading hierarchy", () => {
    expect(paths(doc)).toEqual(["Guide", "Guide > Install", "Guide > Install > Linux", "Guide > Reference"]);
    expect(doc.title).toBe("Acme HTML");
    expect(doc.metadata).toMatchObject({ description: "About Acme", lang: "en" });
  });

  it("renders lists, tables and pre blocks", () => {
    expect(doc.text).toContain("Intro paragraph.");
    expect(doc.text).toContain("- apt\n  - deb\n- rpm");
    expect(doc.text).toContain("key | default\nport | 8080");
    expect(doc.text).toContain("```js\nif (x) {\n  run();\n}\n```");
  });
});

describe("parseDocument: plain text and media types", () => {
  it("reads block quotes and lists nested deeply but within the parser's limit", () => {
    const doc = parseDocument({ text: `${"> ".repeat(90)}still read\n`, filename: "quotes.md" });
    expect(doc.text).toBe("still read");
  });

  it("parses plain text into paragraphs with one section", () => {
    const doc = parseDocument({ bytes: new TextEncoder().encode("First para\nline.\r\n\r\n\r\nSecond."), filename: "notes.txt" });
    expect(doc.text).toBe("First para\nline.\n\nSecond.");
    expect(doc.title).toBe("notes");
    expect(doc.sections).toEqual([{ headingPath: [], level: 0, charStart: 0, charEnd: doc.text.length }]);
  });

  it("detects media types from extensions and explicit types", () => {
    expect(detectMediaType("a/b.MD")).toBe("text/markdown");
    expect(detectMediaType("x.markdown")).toBe("text/markdown");
    expect(detectMediaType("x.htm")).toBe("text/html");
    expect(detectMediaType("x.txt")).toBe("text/plain");
    expect(detectMediaType("x.pdf")).toBeUndefined();
    expect(detectMediaType("x.bin", "text/markdown; charset=utf-8")).toBe("text/markdown");
  });
});

describe("parseDocument: bad input", () => {
  const cases: [string, Parameters<typeof parseDocument>[0], Parameters<typeof parseDocument>[1], string, RegExp][] = [
    ["invalid UTF-8", { bytes: Uint8Array.from([0x48, 0x69, 0xff, 0xfe, 0x21]), filename: "bad.md" }, {}, "invalid-utf8", /not valid UTF-8 \(first bad byte at offset 2\)/],
    ["NUL bytes", { bytes: Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x00, 0x01]), filename: "image.md" }, {}, "binary", /NUL bytes/],
    ["control characters", { text: "ok\u0001\u0002\u0003\u0004 text", filename: "ctl.txt" }, {}, "binary", /control characters/],
    ["empty", { text: "  \n\n\t", filename: "empty.md" }, {}, "empty", /no text content/],
    ["empty HTML", { text: "<html><body><nav>menu</nav><script>x()</script></body></html>", filename: "e.html" }, {}, "empty", /no text content/],
    ["too large", { bytes: new Uint8Array(2048).fill(0x61), filename: "big.txt" }, { maxBytes: 1024 }, "too-large", /2048 bytes, over the limit of 1024/],
    ["unknown media type", { text: "hello", filename: "slides.pptx" }, {}, "unsupported-media-type", /unsupported file extension/],
    ["unknown explicit media type", { text: "hello", filename: "a.md", mediaType: "application/pdf" }, {}, "unsupported-media-type", /media type "application\/pdf"/],
    ["front matter that is not a mapping", { text: "---\n- a\n- b\n---\n# T\n", filename: "fm.md" }, {}, "invalid-front-matter", /YAML mapping/],
    [
      "HTML nested 20,000 levels deep",
      { text: `<html><body>${"<div>".repeat(20_000)}deep${"</div>".repeat(20_000)}</body></html>`, filename: "deep.html" },
      {},
      "too-deep",
      /nests elements too deeply/,
    ],
    ["Markdown block quotes nested 20,000 deep", { text: `${"> ".repeat(20_000)}deep`, filename: "quotes.md" }, {}, "too-deep", /nests block quotes or lists 100 levels deep/],
  ];
  for (const [label, input, options, code, message] of cases) {
    it(`rejects ${label} with code ${code}`, () => {
      let caught: unknown;
      try {
        parseDocument(input, options);
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(DocumentParseError);
      const error = caught as DocumentParseError;
      expect(error.code).toBe(code);
      expect(error.filename).toBe(input.filename);
      expect(error.message).toMatch(message);
      expect(error.message.startsWith(`${input.filename}: `)).toBe(true);
    });
  }
});
