import MarkdownIt from "markdown-it";
import type Token from "markdown-it/lib/token.mjs";
import { parse as parseYaml } from "yaml";
import type { Block } from "./blocks.js";

export interface MarkdownBlocks {
  blocks: Block[];
  /** The YAML front matter, if any (an object; other YAML values are rejected). */
  metadata: Record<string, unknown>;
}

/** Thrown for front matter that is not a YAML mapping; the caller maps it to a parse error. */
export class FrontMatterError extends Error {}

/** Thrown for block quotes or lists nested past markdown-it's limit, past which it drops the rest of the document. */
export class NestingError extends Error {}

/**
 * CommonMark with GFM tables and strikethrough, raw HTML recognized (and reduced to its text).
 * Linkify and typographer stay off: a bare URL is kept as written, quotes are not curled.
 */
const markdown = new MarkdownIt("default", { html: true, linkify: false, typographer: false });

/**
 * Front matter as micromark-extension-frontmatter reads it: at the very start, a `---` (YAML) or
 * `+++` (TOML) line, then up to a line holding the same fence (trailing spaces and tabs allowed).
 */
const FRONT_MATTER = /^(---|\+\+\+)[ \t]*\r?\n(?:([\s\S]*?)\r?\n)?\1[ \t]*(?:\r?\n|$)/;

/**
 * Markdown to blocks with markdown-it's token stream: ATX and setext headings, YAML front matter
 * as metadata (TOML front matter is dropped), tables as " | "-separated rows, lists as "- " /
 * "1. " lines, links as their text, emphasis dropped, inline code in backticks, code fences and
 * indented code kept as fenced blocks, raw HTML as its text.
 */
export function markdownToBlocks(source: string): MarkdownBlocks {
  let metadata: Record<string, unknown> = {};
  let body = source;
  const front = FRONT_MATTER.exec(source);
  if (front !== null) {
    if (front[1] === "---") metadata = readFrontMatter(front[2] ?? "");
    body = source.slice(front[0].length);
  }
  const tokens = markdown.parse(body, {});
  // At its nesting limit markdown-it stops reading and skips the rest of the document: refuse rather than lose text.
  const limit = (markdown.options as { maxNesting?: number }).maxNesting ?? 100;
  if (tokens.some((t) => t.nesting === 1 && t.level >= limit - 1)) {
    throw new NestingError(`the Markdown nests block quotes or lists ${limit} levels deep or more, past which the parser cannot read; flatten it`);
  }
  const walker = new TokenWalker(tokens);
  const blocks: Block[] = [];
  walker.flow(blocks, undefined);
  return { blocks, metadata };
}

function readFrontMatter(value: string): Record<string, unknown> {
  let data: unknown;
  try {
    data = parseYaml(value);
  } catch (error) {
    throw new FrontMatterError(`front matter is not valid YAML: ${(error as Error).message.split("\n")[0]}`);
  }
  if (data === null || data === undefined) return {};
  if (typeof data !== "object" || Array.isArray(data)) {
    throw new FrontMatterError("front matter must be a YAML mapping (key: value lines)");
  }
  return data as Record<string, unknown>;
}

/** Reads markdown-it's flat block token stream (open/close pairs) in one pass. */
class TokenWalker {
  private i = 0;

  constructor(private readonly tokens: Token[]) {}

  /** Blocks up to the token of type `close` (consumed), or to the end of the stream. */
  flow(out: Block[], close: string | undefined): void {
    const tokens = this.tokens;
    while (this.i < tokens.length) {
      if (tokens[this.i]!.type === close) {
        this.i++;
        return;
      }
      this.block(out);
    }
  }

  /** One block construct starting at the current token. */
  private block(out: Block[]): void {
    const token = this.tokens[this.i]!;
    switch (token.type) {
      case "heading_open":
        out.push({ kind: "heading", level: Number(token.tag.slice(1)), text: inlineText(this.tokens[this.i + 1]!) });
        this.i += 3;
        return;
      case "paragraph_open":
        out.push({ kind: "text", text: inlineText(this.tokens[this.i + 1]!) });
        this.i += 3;
        return;
      case "fence":
        out.push({ kind: "verbatim", text: fence(token.content, token.info.trim().split(/\s+/)[0] ?? "") });
        this.i++;
        return;
      case "code_block":
        out.push({ kind: "verbatim", text: fence(token.content, "") });
        this.i++;
        return;
      case "bullet_list_open":
      case "ordered_list_open":
        out.push({ kind: "text", text: this.list(0).join("\n") });
        return;
      case "table_open":
        out.push({ kind: "text", text: this.table().join("\n") });
        return;
      case "blockquote_open":
        this.i++;
        this.flow(out, "blockquote_close");
        return;
      case "html_block":
        out.push({ kind: "text", text: stripTags(token.content) });
        this.i++;
        return;
      default:
        // hr, and anything without text of its own. (Link reference definitions leave no token.)
        this.i++;
    }
  }

  /** Lines of the list opening at the current token, nested lists indented two spaces per level. */
  private list(depth: number): string[] {
    const open = this.tokens[this.i]!;
    const close = open.type === "ordered_list_open" ? "ordered_list_close" : "bullet_list_close";
    const start = open.type === "ordered_list_open" ? Number(open.attrGet("start") ?? 1) : undefined;
    const indent = "  ".repeat(depth);
    const lines: string[] = [];
    this.i++;
    for (let index = 0; this.tokens[this.i]!.type !== close; index++) {
      // list_item_open
      this.i++;
      const marker = start === undefined ? "- " : `${start + index}. `;
      let first = true;
      while (this.tokens[this.i]!.type !== "list_item_close") {
        const type = this.tokens[this.i]!.type;
        if (type === "bullet_list_open" || type === "ordered_list_open") {
          lines.push(...this.list(depth + 1));
          continue;
        }
        const inner: Block[] = [];
        this.block(inner);
        // A GFM task item's box is written "[x]" whichever case the source used.
        if (first && inner[0]?.kind === "text") inner[0].text = inner[0].text.replace(/^\[X\](?=[ \t])/, "[x]");
        for (const block of inner) {
          for (const line of block.text.split("\n")) {
            lines.push(first ? `${indent}${marker}${line}` : `${indent}  ${line}`);
            first = false;
          }
        }
      }
      this.i++;
      if (first) lines.push(`${indent}${marker}`.trimEnd());
    }
    this.i++;
    return lines;
  }

  /** Rows of the table opening at the current token, cells joined by " | ". */
  private table(): string[] {
    const rows: string[] = [];
    let cells: string[] = [];
    for (this.i++; this.tokens[this.i]!.type !== "table_close"; this.i++) {
      const token = this.tokens[this.i]!;
      if (token.type === "inline") cells.push(inlineText(token).trim());
      else if (token.type === "tr_close") {
        // markdown-it pads a short row with empty cells; trailing empty cells carry no text.
        while (cells.length > 0 && cells[cells.length - 1] === "") cells.pop();
        rows.push(cells.join(" | "));
        cells = [];
      }
    }
    this.i++;
    return rows;
  }
}

/** A code block as a fence: its content kept as written, the fence longer than any run inside. */
function fence(content: string, lang: string): string {
  const value = content.endsWith("\n") ? content.slice(0, -1) : content;
  const ticks = /`{3,}/.test(value) ? "````" : "```";
  return `${ticks}${lang}\n${value}\n${ticks}`;
}

/** The text of an inline token: links and emphasis as their text, code in backticks, images as alt text. */
function inlineText(token: Token): string {
  const children = token.children;
  if (children === null) return token.content;
  let out = "";
  for (const child of children) {
    switch (child.type) {
      case "text":
      case "text_special":
        out += child.content;
        break;
      case "softbreak":
        out += " ";
        break;
      case "hardbreak":
        out += "\n";
        break;
      case "code_inline":
        out += `\`${child.content}\``;
        break;
      case "image":
        out += inlineText(child);
        break;
      case "html_inline":
        out += stripTags(child.content);
        break;
      default:
      // link_open/close, em/strong/s open/close: markup without text.
    }
  }
  return out;
}

/** Text of raw HTML inside Markdown: tags and comments dropped. */
export function stripTags(html: string): string {
  return html
    .replace(/<!--[\s\S]*?-->/g, "")
    .replace(/<(script|style)\b[\s\S]*?<\/\1>/gi, "")
    .replace(/<[^>]+>/g, "")
    .replace(/&nbsp;/g, " ")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&amp;/g, "&");
}
