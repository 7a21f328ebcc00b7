/**
 * The shape both document parsers produce, and how blocks become the normalized text and its
 * section outline.
 */

/** A block of a parsed document, in reading order. */
export type Block =
  | { kind: "heading"; level: number; text: string }
  /** Prose; whitespace runs collapse to one space, lines are kept. */
  | { kind: "text"; text: string }
  /** Code and other preformatted text: kept as written (only trailing spaces and blank edges go). */
  | { kind: "verbatim"; text: string };

/** A heading-delimited part of the normalized text. */
export interface Section {
  /** Titles of the enclosing headings, outermost first; [] for text before the first heading. */
  headingPath: string[];
  /** Heading level (1–6); 0 for text before the first heading. */
  level: number;
  /** Offsets into the normalized text: [charStart, charEnd). */
  charStart: number;
  charEnd: number;
}

export interface AssembledText {
  text: string;
  sections: Section[];
  firstHeading: string | undefined;
}

const BLOCK_SEPARATOR = "\n\n";

/** Joins blocks into the normalized text (blocks separated by one blank line) and its sections. */
export function assembleBlocks(blocks: Block[]): AssembledText {
  const parts: string[] = [];
  const sections: Section[] = [];
  const stack: { level: number; title: string }[] = [];
  let length = 0;
  let open: Section | undefined;
  let firstHeading: string | undefined;

  const append = (text: string): number => {
    if (parts.length > 0) length += BLOCK_SEPARATOR.length;
    const start = length;
    parts.push(text);
    length += text.length;
    return start;
  };

  for (const block of blocks) {
    const text = normalizeBlock(block);
    if (text.length === 0) continue;
    if (block.kind === "heading") {
      const level = Math.min(6, Math.max(1, block.level));
      while (stack.length > 0 && stack[stack.length - 1]!.level >= level) stack.pop();
      stack.push({ level, title: text });
      firstHeading ??= text;
      const start = append(text);
      open = { headingPath: stack.map((h) => h.title), level, charStart: start, charEnd: start + text.length };
      sections.push(open);
    } else {
      const start = append(text);
      if (open === undefined) {
        open = { headingPath: [], level: 0, charStart: start, charEnd: start + text.length };
        sections.push(open);
      }
      open.charEnd = start + text.length;
    }
  }
  return { text: parts.join(BLOCK_SEPARATOR), sections, firstHeading };
}

/** Normalizes one block's text (NFC, no carriage returns, no trailing spaces, no blank edges). */
export function normalizeBlock(block: Block): string {
  let text = block.text.normalize("NFC").replace(/\r\n?/g, "\n");
  if (block.kind === "verbatim") {
    text = text.replace(/[ \t]+$/gm, "").replace(/^\n+|\n+$/g, "");
    return text;
  }
  if (block.kind === "heading") return collapse(text.replace(/\n/g, " "));
  return text
    .split("\n")
    .map((line) => {
      // Keep a list item's indentation; collapse the rest.
      const indent = /^ */.exec(line)![0];
      return indent + collapse(line.slice(indent.length));
    })
    .filter((line) => line.trim().length > 0)
    .join("\n");
}

function collapse(text: string): string {
  return text.replace(/[\s\u00a0]+/g, " ").trim();
}
