/**
 * Stop strings over streamed text: text is passed on as soon as it cannot be the start of a stop string; when a
 * stop string appears the text before it is passed on, the rest dropped, and `onStop` is called once.
 */
export class StopStringFilter {
  #text = "";
  #emitted = 0;
  #stop: string | null = null;
  readonly #longest: number;

  constructor(
    readonly stops: readonly string[],
    readonly onText: (text: string) => void,
    readonly onStop: () => void,
  ) {
    this.#longest = Math.max(0, ...stops.map((s) => s.length));
  }

  /** The stop string that ended the text, or null. */
  get stopString(): string | null {
    return this.#stop;
  }

  push(chunk: string): void {
    if (this.#stop !== null || chunk === "") return;
    const from = Math.max(0, this.#emitted - this.#longest + 1);
    this.#text += chunk;
    // The earliest stop string in the text not yet searched (a match may begin in text already passed on only if
    // it was held back, so searching from `from` finds every new match).
    let at = -1;
    for (const stop of this.stops) {
      const i = this.#text.indexOf(stop, from);
      if (i !== -1 && (at === -1 || i < at)) {
        at = i;
        this.#stop = stop;
      }
    }
    if (at !== -1) {
      this.#text = this.#text.slice(0, at);
      this.#flush(this.#text.length);
      this.onStop();
      return;
    }
    this.#flush(this.#text.length - this.#heldBack());
  }

  /** Passes on what was held back (no stop string came) and returns the whole text. */
  end(): string {
    this.#flush(this.#text.length);
    return this.#text;
  }

  /** Length of the longest end of the text that is the start of a stop string. */
  #heldBack(): number {
    const tail = this.#text.slice(this.#emitted);
    for (let n = Math.min(tail.length, this.#longest - 1); n > 0; n--) {
      const end = tail.slice(tail.length - n);
      if (this.stops.some((s) => s.startsWith(end))) return n;
    }
    return 0;
  }

  #flush(upTo: number): void {
    if (upTo > this.#emitted) {
      this.onText(this.#text.slice(this.#emitted, upTo));
      this.#emitted = upTo;
    }
  }
}
