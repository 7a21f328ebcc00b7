import { describe, expect, it } from "vitest";
import { SseLineTooLongError, SseParser, type SseEvent } from "./sse.js";

function parseAll(pieces: string[]): SseEvent[] {
  const parser = new SseParser();
  const events = pieces.flatMap((p) => parser.push(p));
  return [...events, ...parser.end()];
}

const STREAM =
  "\uFEFF: comment\r\n" +
  "data: {\"a\":1}\r\n\r\n" +
  "event: usage\ndata:  two spaces keep one\n\n" +
  "data: line one\rdata: line two\r\r" +
  "data\n\n" +
  "id: 7\nretry: 100\ndata:[DONE]\n\n";

const EXPECTED: SseEvent[] = [
  { event: "message", data: '{"a":1}' },
  { event: "usage", data: " two spaces keep one" },
  { event: "message", data: "line one\nline two" },
  { event: "message", data: "" },
  { event: "message", data: "[DONE]" },
];

describe("SseParser", () => {
  it("reads CRLF, LF and CR line ends, comments, event names, multi-line data and a BOM", () => {
    expect(parseAll([STREAM])).toEqual(EXPECTED);
  });

  it("gives the same events however the text is cut into pieces (every pair of cut points)", () => {
    for (let i = 0; i <= STREAM.length; i++) {
      for (let j = i; j <= STREAM.length; j++) {
        const pieces = [STREAM.slice(0, i), STREAM.slice(i, j), STREAM.slice(j)];
        expect(parseAll(pieces), `cuts at ${i}, ${j}`).toEqual(EXPECTED);
      }
    }
  });

  it("one character at a time", () => {
    expect(parseAll([...STREAM])).toEqual(EXPECTED);
  });

  it("a last event without its blank line, or without its line end, still counts at the end", () => {
    expect(parseAll(["data: a\n\ndata: b\n"])).toEqual([
      { event: "message", data: "a" },
      { event: "message", data: "b" },
    ]);
    expect(parseAll(["data: [DONE]"])).toEqual([{ event: "message", data: "[DONE]" }]);
  });

  it("an event only arrives with its blank line", () => {
    const parser = new SseParser();
    expect(parser.push("data: x\n")).toEqual([]);
    expect(parser.push("\n")).toEqual([{ event: "message", data: "x" }]);
  });

  it("refuses a line longer than its limit instead of buffering without end", () => {
    const parser = new SseParser(1000);
    expect(() => {
      for (let i = 0; i < 20; i++) parser.push("x".repeat(100));
    }).toThrow(SseLineTooLongError);
    // Long streams of short lines are fine.
    const ok = new SseParser(1000);
    for (let i = 0; i < 500; i++) expect(ok.push(`data: ${i}\n\n`)).toEqual([{ event: "message", data: String(i) }]);
  });
});
