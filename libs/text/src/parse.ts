import { assembleBlocks, type Block, type Section } from "./blocks.js";
import { htmlToBlocks } from "./html.js";
import { FrontMatterError, markdownToBlocks, NestingError } from "./markdown.js";

export type MediaType = "text/markdown" | "text/html" | "text/plain";

export type ParseErrorCode =
  | "invalid-utf8"
  | "binary"
  | "empty"
  | "too-large"
  | "unsupported-media-type"
  | "invalid-front-matter"
  /** Markup nested more deeply than the parser can follow (HTML thousands of levels, Markdown 100). */
  | "too-deep";

/** A document that cannot be ingested; `code` says why, the message says what to do. */
export class DocumentParseError extends Error {
  override readonly name = "DocumentParseError";
  constructor(
    readonly code: ParseErrorCode,
    readonly filename: string,
    message: string,
  ) {
    super(`${filename}: ${message}`);
  }
}

export interface ParseInput {
  /** Raw file bytes (decoded as strict UTF-8) … */
  bytes?: Uint8Array;
  /** … or already decoded text. Exactly one of the two. */
  text?: string;
  /** The document's file name or path; used for media type detection and messages. */
  filename: string;
  /** Overrides detection from the file name, e.g. "text/markdown; charset=utf-8". */
  mediaType?: string;
}

export interface ParseOptions {
  /** Documents larger than this many bytes are rejected (default 10 MiB). */
  maxBytes?: number;
}

export interface ParsedDocument {
  filename: string;
  mediaType: MediaType;
  /** Front matter / <title> title, else the first heading, else the file name without extension. */
  title: string;
  /** Front matter (Markdown) or <meta> tags (HTML). */
  metadata: Record<string, unknown>;
  /** Normalized text: NFC, "\n" line ends, blocks separated by one blank line. */
  text: string;
  /** Heading outline; sections tile the text's blocks in order. */
  sections: Section[];
}

export const DEFAULT_MAX_BYTES = 10 * 1024 * 1024;

const EXTENSIONS: Record<string, MediaType> = {
  md: "text/markdown",
  markdown: "text/markdown",
  mdown: "text/markdown",
  mkd: "text/markdown",
  html: "text/html",
  htm: "text/html",
  xhtml: "text/html",
  txt: "text/plain",
  text: "text/plain",
};

const MEDIA_TYPES: Record<string, MediaType> = {
  "text/markdown": "text/markdown",
  "text/x-markdown": "text/markdown",
  "text/html": "text/html",
  "application/xhtml+xml": "text/html",
  "text/plain": "text/plain",
};

/** The media type for a file name or explicit media type, or undefined when ragtune cannot parse it. */
export function detectMediaType(filename: string, mediaType?: string): MediaType | undefined {
  if (mediaType !== undefined && mediaType.trim() !== "") {
    return MEDIA_TYPES[mediaType.split(";")[0]!.trim().toLowerCase()];
  }
  const match = /\.([A-Za-z0-9]+)$/.exec(filename);
  return match === null ? undefined : EXTENSIONS[match[1]!.toLowerCase()];
}

/**
 * Parses one document into normalized text with a heading outline.
 * Throws DocumentParseError for input that is not a text document ragtune can read.
 */
export function parseDocument(input: ParseInput, options: ParseOptions = {}): ParsedDocument {
  const { filename } = input;
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  const mediaType = detectMediaType(filename, input.mediaType);
  if (mediaType === undefined) {
    const what = input.mediaType ? `media type "${input.mediaType}"` : "file extension";
    throw new DocumentParseError(
      "unsupported-media-type",
      filename,
      `unsupported ${what}: expected Markdown (.md, .markdown), HTML (.html, .htm) or plain text (.txt)`,
    );
  }
  const source = decode(input, maxBytes);

  let blocks: Block[];
  let metadata: Record<string, unknown> = {};
  let declaredTitle: string | undefined;
  if (mediaType === "text/markdown") {
    try {
      ({ blocks, metadata } = markdownToBlocks(source));
    } catch (error) {
      if (error instanceof FrontMatterError) throw new DocumentParseError("invalid-front-matter", filename, error.message);
      if (error instanceof NestingError) throw new DocumentParseError("too-deep", filename, error.message);
      throw error;
    }
    if (typeof metadata["title"] === "string") declaredTitle = metadata["title"];
  } else if (mediaType === "text/html") {
    const html = readHtml(source, filename);
    blocks = html.blocks;
    metadata = html.metadata;
    declaredTitle = html.title;
  } else {
    blocks = source.split(/\r?\n(?:[ \t]*\r?\n)+/).map((text) => ({ kind: "text" as const, text }));
  }

  const { text, sections, firstHeading } = assembleBlocks(blocks);
  if (text.trim().length === 0) {
    throw new DocumentParseError("empty", filename, "the document has no text content after parsing");
  }
  const title = nonEmpty(declaredTitle) ?? firstHeading ?? stem(filename);
  return { filename, mediaType, title, metadata, text, sections };
}

/**
 * HTML to blocks; markup nested thousands of levels deep (no real page is) exhausts the stack of the tree builder
 * (hast-util-from-parse5 recurses per level), which becomes a clear per-document error instead of a system error.
 */
function readHtml(source: string, filename: string): ReturnType<typeof htmlToBlocks> {
  try {
    return htmlToBlocks(source);
  } catch (error) {
    if (error instanceof RangeError && /call stack/i.test(error.message)) {
      throw new DocumentParseError(
        "too-deep",
        filename,
        "the HTML nests elements too deeply to read (thousands of levels inside each other); flatten the markup or convert the page to Markdown",
      );
    }
    throw error;
  }
}

function decode(input: ParseInput, maxBytes: number): string {
  const { filename } = input;
  if ((input.bytes === undefined) === (input.text === undefined)) {
    throw new TypeError(`${filename}: pass exactly one of bytes or text`);
  }
  let text: string;
  if (input.bytes !== undefined) {
    const bytes = input.bytes;
    if (bytes.byteLength > maxBytes) throw tooLarge(filename, bytes.byteLength, maxBytes);
    if (bytes.includes(0)) {
      throw new DocumentParseError("binary", filename, "the file holds NUL bytes: it is binary, not a text document");
    }
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      throw new DocumentParseError(
        "invalid-utf8",
        filename,
        `the file is not valid UTF-8 (first bad byte at offset ${firstInvalidUtf8(bytes)}); convert it to UTF-8`,
      );
    }
  } else {
    text = input.text!;
    const size = Buffer.byteLength(text, "utf8");
    if (size > maxBytes) throw tooLarge(filename, size, maxBytes);
    if (text.includes("\u0000")) {
      throw new DocumentParseError("binary", filename, "the text holds NUL characters: it is binary, not a text document");
    }
  }
  let control = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if ((c < 32 && c !== 9 && c !== 10 && c !== 13 && c !== 12) || c === 127 || c === 0xfffd) control++;
  }
  if (control > 0 && control / text.length > 0.01) {
    throw new DocumentParseError(
      "binary",
      filename,
      `${control} of ${text.length} characters are control characters: it looks binary, not a text document`,
    );
  }
  return text;
}

function tooLarge(filename: string, size: number, maxBytes: number): DocumentParseError {
  return new DocumentParseError("too-large", filename, `the document is ${size} bytes, over the limit of ${maxBytes} bytes`);
}

/** Offset of the first byte that starts an invalid UTF-8 sequence (structural check, for the message). */
function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i]!;
    const extra = b < 0x80 ? 0 : b >= 0xc2 && b <= 0xdf ? 1 : b >= 0xe0 && b <= 0xef ? 2 : b >= 0xf0 && b <= 0xf4 ? 3 : -1;
    if (extra < 0 || i + extra >= bytes.length) return i;
    for (let k = 1; k <= extra; k++) if ((bytes[i + k]! & 0xc0) !== 0x80) return i;
    i += extra + 1;
  }
  return i;
}

function nonEmpty(value: string | undefined): string | undefined {
  const trimmed = value?.replace(/\s+/g, " ").trim();
  return trimmed === undefined || trimmed === "" ? undefined : trimmed;
}

function stem(filename: string): string {
  const base = filename.split(/[\\/]/).pop() ?? filename;
  return base.replace(/\.[^.]+$/, "") || base;
}

export type { Section };
