/** One server-sent event. */
export interface SseEvent {
  /** The `event:` field; "message" when the server sent none. */
  event: string;
  /** The `data:` lines joined with "\n". */
  data: string;
}

/** An event line longer than the parser's limit (a server that never ends its line). */
export class SseLineTooLongError extends Error {
  constructor(readonly limit: number) {
    super(`server-sent event line longer than ${limit} characters`);
    this.name = "SseLineTooLongError";
  }
}

const LINE_END = /[\r\n]/g;

/**
 * Incremental parser of a text/event-stream body (WHATWG HTML "event stream interpretation"): feed it decoded
 * text in pieces of any size — a piece may end inside a field name, a value or between the CR and LF of a line
 * end — and it returns each event when its blank line arrives. Lines end with CRLF, LF or CR; `:` lines are
 * comments; one space after the colon is dropped; several `data:` lines form one event. Text in the pieces must
 * already be decoded (use a streaming TextDecoder so a character split between network chunks stays whole).
 */
export class SseParser {
  #buffer = "";
  #data: string[] = [];
  #event = "";
  #skipLeadingLf = false;
  #first = true;

  constructor(readonly maxLineChars = Number.POSITIVE_INFINITY) {}

  push(text: string): SseEvent[] {
    if (text === "") return [];
    if (this.#first) {
      this.#first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.#skipLeadingLf) {
      this.#skipLeadingLf = false;
      if (text.startsWith("\n")) text = text.slice(1);
    }
    const buffer = this.#buffer + text;
    const events: SseEvent[] = [];
    let start = 0;
    LINE_END.lastIndex = 0;
    for (let m = LINE_END.exec(buffer); m !== null; m = LINE_END.exec(buffer)) {
      const end = m.index;
      let next = end + 1;
      if (buffer[end] === "\r") {
        if (end + 1 === buffer.length) this.#skipLeadingLf = true; // the LF of this CRLF may come in the next piece
        else if (buffer[end + 1] === "\n") next = end + 2;
      }
      this.#line(buffer.slice(start, end), events);
      start = next;
      LINE_END.lastIndex = next;
    }
    this.#buffer = buffer.slice(start);
    if (this.#buffer.length > this.maxLineChars) throw new SseLineTooLongError(this.maxLineChars);
    return events;
  }

  /** The body ended: a last line without its line end and an event without its blank line still count. */
  end(): SseEvent[] {
    const events: SseEvent[] = [];
    if (this.#buffer !== "") this.#line(this.#buffer, events);
    this.#buffer = "";
    this.#line("", events);
    return events;
  }

  #line(line: string, events: SseEvent[]): void {
    if (line === "") {
      if (this.#data.length > 0) events.push({ event: this.#event || "message", data: this.#data.join("\n") });
      this.#data = [];
      this.#event = "";
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.#data.push(value);
    else if (field === "event") this.#event = value;
    // id and retry steer browser reconnection, which a model call does not do.
  }
}
