import type { List, PhrasingContent, RootContent, Table } from "mdast";
import { fromMarkdown } from "mdast-util-from-markdown";
import { frontmatterFromMarkdown } from "mdast-util-frontmatter";
import { gfmFromMarkdown } from "mdast-util-gfm";
import { frontmatter } from "micromark-extension-frontmatter";
import { gfm } from "micromark-extension-gfm";
import { parse as parseYaml } from "yaml";
import type { Block } from "./blocks.js";

export interface MarkdownBlocks {
  blocks: Block[];
  /** The YAML front matter, if any (an object; other YAML values are rejected). */
  metadata: Record<string, unknown>;
}

/** Thrown for front matter that is not a YAML mapping; the caller maps it to a parse error. */
export class FrontMatterError extends Error {}

/**
 * Markdown (CommonMark + GFM) to blocks with mdast: ATX and setext headings, YAML front matter as
 * metadata, tables as " | "-separated rows, links as their text, code fences kept with their fence.
 */
export function markdownToBlocks(source: string): MarkdownBlocks {
  const tree = fromMarkdown(source, {
    extensions: [gfm(), frontmatter(["yaml", "toml"])],
    mdastExtensions: [gfmFromMarkdown(), frontmatterFromMarkdown(["yaml", "toml"])],
  });
  const blocks: Block[] = [];
  let metadata: Record<string, unknown> = {};
  for (const node of tree.children) {
    if (node.type === "yaml") {
      metadata = readFrontMatter(node.value);
      continue;
    }
    flowToBlocks(node, blocks);
  }
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

function flowToBlocks(node: RootContent, out: Block[]): void {
  switch (node.type) {
    case "heading":
      out.push({ kind: "heading", level: node.depth, text: inline(node.children) });
      return;
    case "paragraph":
      out.push({ kind: "text", text: inline(node.children) });
      return;
    case "code":
      out.push({ kind: "verbatim", text: fence(node.value, node.lang) });
      return;
    case "list":
      out.push({ kind: "text", text: listLines(node, 0).join("\n") });
      return;
    case "table":
      out.push({ kind: "text", text: tableLines(node).join("\n") });
      return;
    case "blockquote":
      for (const child of node.children) flowToBlocks(child, out);
      return;
    case "html":
      out.push({ kind: "text", text: stripTags(node.value) });
      return;
    case "footnoteDefinition": {
      const inner: Block[] = [];
      for (const child of node.children) flowToBlocks(child, inner);
      out.push({ kind: "text", text: `[^${node.identifier}]: ${inner.map((b) => b.text).join(" ")}` });
      return;
    }
    default:
      // thematicBreak, definition, toml front matter: no text of their own.
      return;
  }
}

function fence(value: string, lang: string | null | undefined): string {
  const ticks = /`{3,}/.test(value) ? "````" : "```";
  return `${ticks}${lang ?? ""}\n${value}\n${ticks}`;
}

function inline(nodes: PhrasingContent[]): string {
  let out = "";
  for (const node of nodes) {
    switch (node.type) {
      case "text":
        out += node.value.replace(/\n/g, " ");
        break;
      case "inlineCode":
        out += `\`${node.value}\``;
        break;
      case "break":
        out += "\n";
        break;
      case "image":
      case "imageReference":
        out += node.alt ?? "";
        break;
      case "html":
        out += stripTags(node.value);
        break;
      case "footnoteReference":
        out += `[^${node.identifier}]`;
        break;
      default:
        if ("children" in node) out += inline(node.children as PhrasingContent[]);
    }
  }
  return out;
}

function listLines(list: List, depth: number): string[] {
  const lines: string[] = [];
  const indent = "  ".repeat(depth);
  list.children.forEach((item, index) => {
    const marker = list.ordered ? `${(list.start ?? 1) + index}. ` : "- ";
    const check = item.checked === true ? "[x] " : item.checked === false ? "[ ] " : "";
    let first = true;
    for (const child of item.children) {
      if (child.type === "list") {
        lines.push(...listLines(child, depth + 1));
        continue;
      }
      const inner: Block[] = [];
      flowToBlocks(child, inner);
      for (const block of inner) {
        for (const line of block.text.split("\n")) {
          lines.push(first ? `${indent}${marker}${check}${line}` : `${indent}  ${line}`);
          first = false;
        }
      }
    }
    if (first) lines.push(`${indent}${marker}${check}`.trimEnd());
  });
  return lines;
}

function tableLines(table: Table): string[] {
  return table.children.map((row) => row.children.map((cell) => inline(cell.children).trim()).join(" | "));
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

