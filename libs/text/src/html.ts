import type { Element, ElementContent, Root, RootContent } from "hast";
import { fromHtml } from "hast-util-from-html";
import type { Block } from "./blocks.js";

export interface HtmlBlocks {
  blocks: Block[];
  /** <title>, when present. */
  title: string | undefined;
  /** <meta name|property="…" content="…"> pairs and <html lang>. */
  metadata: Record<string, unknown>;
}

/** Elements that never hold document content. */
const SKIPPED = new Set([
  "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "svg", "form",
  "button", "iframe", "select", "head", "object", "canvas", "dialog",
]);
/** ARIA landmarks of page chrome. */
const SKIPPED_ROLES = new Set(["navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar"]);
/** class / id tokens of page chrome. */
const SKIPPED_NAMES = new Set([
  "nav", "navbar", "navigation", "nav-bar", "sidebar", "side-bar", "menu", "toc", "table-of-contents",
  "header", "site-header", "page-header", "footer", "site-footer", "page-footer", "skip-link", "skiplink",
  "cookie-banner", "cookies", "breadcrumb", "breadcrumbs", "pagination", "pager",
]);
const BLOCK_TAGS = new Set([
  "p", "div", "section", "article", "main", "body", "html", "blockquote", "figure", "figcaption", "dl", "dt",
  "dd", "address", "details", "summary", "fieldset", "center", "hgroup",
]);
const HEADING = /^h([1-6])$/;

/**
 * HTML to blocks with hast (parse5, the WHATWG parser): page chrome dropped by tag, ARIA role and
 * class/id hints; h1–h6 become the heading hierarchy; lists become "- " lines; tables become
 * " | "-separated rows; <pre> is kept verbatim in a code fence.
 */
export function htmlToBlocks(source: string): HtmlBlocks {
  const tree: Root = fromHtml(source);
  const metadata: Record<string, unknown> = {};
  let title: string | undefined;
  visit(tree, (el) => {
    if (el.tagName === "title" && title === undefined) title = collapse(textContent(el));
    if (el.tagName === "meta") {
      const key = str(el.properties["name"]) ?? str(el.properties["property"]);
      const content = str(el.properties["content"]);
      if (key !== undefined && content !== undefined) metadata[key] = content;
    }
    if (el.tagName === "html" && str(el.properties["lang"]) !== undefined) metadata["lang"] = str(el.properties["lang"]);
  });

  const blocks: Block[] = [];
  let buffer = "";
  const flush = (): void => {
    if (buffer.trim().length > 0) blocks.push({ kind: "text", text: tidyInline(buffer) });
    buffer = "";
  };
  const walk = (nodes: (RootContent | ElementContent)[]): void => {
    for (const node of nodes) {
      if (node.type === "text") {
        buffer += spaces(node.value);
        continue;
      }
      if (node.type !== "element" || isChrome(node)) continue;
      const tag = node.tagName;
      const heading = HEADING.exec(tag);
      if (heading !== null) {
        flush();
        blocks.push({ kind: "heading", level: Number(heading[1]), text: tidyInline(inlineText(node, false)) });
      } else if (tag === "pre") {
        flush();
        blocks.push({ kind: "verbatim", text: preFence(node) });
      } else if (tag === "ul" || tag === "ol" || tag === "menu") {
        flush();
        blocks.push({ kind: "text", text: listLines(node, 0).join("\n") });
      } else if (tag === "table") {
        flush();
        blocks.push({ kind: "text", text: tableRows(node).join("\n") });
      } else if (tag === "br") {
        buffer += "\n";
      } else if (tag === "hr") {
        flush();
      } else if (tag === "img") {
        buffer += str(node.properties["alt"]) ?? "";
      } else if (BLOCK_TAGS.has(tag)) {
        flush();
        walk(node.children);
        flush();
      } else if (tag === "code") {
        buffer += `\`${textContent(node)}\``;
      } else {
        walk(node.children);
      }
    }
  };
  walk(tree.children);
  flush();
  return { blocks, title, metadata };
}

function isChrome(el: Element): boolean {
  if (SKIPPED.has(el.tagName)) return true;
  if (el.properties["hidden"] === true || str(el.properties["ariaHidden"]) === "true") return true;
  const role = str(el.properties["role"]);
  if (role !== undefined && SKIPPED_ROLES.has(role.toLowerCase())) return true;
  const names = [...classList(el), ...(str(el.properties["id"]) ?? "").split(/\s+/)];
  return names.some((n) => {
    const name = n.toLowerCase();
    return SKIPPED_NAMES.has(name) || name.includes("breadcrumb");
  });
}

function classList(el: Element): string[] {
  const value: unknown = el.properties["className"];
  if (Array.isArray(value)) return value.map(String);
  return typeof value === "string" ? value.split(/\s+/) : [];
}

function str(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (Array.isArray(value)) return value.join(" ");
  if (typeof value === "number") return String(value);
  return undefined;
}

/** Text of a subtree for inline use; nested lists are left out when `skipLists` (they get lines of their own). */
function inlineText(el: Element, skipLists: boolean): string {
  let out = "";
  for (const node of el.children) {
    if (node.type === "text") out += spaces(node.value);
    else if (node.type === "element" && !isChrome(node)) {
      const tag = node.tagName;
      if (skipLists && (tag === "ul" || tag === "ol")) continue;
      if (tag === "br") out += "\n";
      else if (tag === "img") out += str(node.properties["alt"]) ?? "";
      else if (tag === "code" && el.tagName !== "pre") out += `\`${textContent(node)}\``;
      else if (BLOCK_TAGS.has(tag) || tag === "pre" || tag === "table" || tag === "ul" || tag === "ol") {
        out += ` ${inlineText(node, skipLists)} `;
      } else out += inlineText(node, skipLists);
    }
  }
  return out;
}

function listLines(list: Element, depth: number): string[] {
  const lines: string[] = [];
  const indent = "  ".repeat(depth);
  const start = Number(list.properties["start"] ?? 1);
  let index = 0;
  for (const item of list.children) {
    if (item.type !== "element" || item.tagName !== "li" || isChrome(item)) continue;
    const marker = list.tagName === "ol" ? `${start + index}. ` : "- ";
    index++;
    lines.push(`${indent}${marker}${tidyInline(inlineText(item, true)).replace(/\n/g, " ")}`.trimEnd());
    visitLists(item, (nested) => lines.push(...listLines(nested, depth + 1)));
  }
  return lines;
}

/** Calls `fn` for the lists directly nested in `el` (not for lists inside those lists). */
function visitLists(el: Element, fn: (list: Element) => void): void {
  for (const node of el.children) {
    if (node.type !== "element" || isChrome(node)) continue;
    if (node.tagName === "ul" || node.tagName === "ol") fn(node);
    else visitLists(node, fn);
  }
}

function tableRows(table: Element): string[] {
  const rows: string[] = [];
  const collect = (el: Element): void => {
    for (const node of el.children) {
      if (node.type !== "element") continue;
      if (node.tagName === "tr") {
        const cells = node.children
          .filter((c): c is Element => c.type === "element" && (c.tagName === "td" || c.tagName === "th"))
          .map((c) => tidyInline(inlineText(c, false)).replace(/\n/g, " "));
        if (cells.some((c) => c.length > 0)) rows.push(cells.join(" | "));
      } else if (node.tagName === "caption") {
        rows.push(tidyInline(inlineText(node, false)));
      } else if (node.tagName !== "table") collect(node);
    }
  };
  collect(table);
  return rows;
}

function preFence(pre: Element): string {
  const code = pre.children.find((c): c is Element => c.type === "element" && c.tagName === "code");
  const lang = classList(code ?? pre)
    .map((c) => /^(?:language|lang)-(.+)$/.exec(c)?.[1])
    .find((l) => l !== undefined);
  const body = textContent(pre).replace(/^\n/, "").replace(/\s+$/, "");
  const ticks = body.includes("```") ? "````" : "```";
  return `${ticks}${lang ?? ""}\n${body}\n${ticks}`;
}

function textContent(el: Element | Root): string {
  let out = "";
  for (const node of el.children) {
    if (node.type === "text") out += node.value;
    else if (node.type === "element") out += node.tagName === "br" ? "\n" : textContent(node);
  }
  return out;
}

function visit(node: Root | Element, fn: (el: Element) => void): void {
  for (const child of node.children) {
    if (child.type === "element") {
      fn(child);
      visit(child, fn);
    }
  }
}

/** Source line breaks are plain whitespace in HTML; only <br> breaks a line. */
function spaces(text: string): string {
  return text.replace(/[ \t\n\r\f]+/g, " ");
}

/** Collapses HTML whitespace in inline text, keeping <br> line breaks. */
function tidyInline(text: string): string {
  return text
    .split("\n")
    .map((line) => collapse(line))
    .filter((line) => line.length > 0)
    .join("\n");
}

function collapse(text: string): string {
  return text.replace(/[\s\u00a0]+/g, " ").trim();
}
