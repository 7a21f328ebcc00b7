/** A tiny DOM builder: the dashboard is plain TypeScript over the DOM, no framework. */
type Child = Node | string | number | null | undefined | false;
type Attr = string | number | boolean | undefined | ((ev: Event) => void);

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, Attr> = {}, ...children: (Child | Child[])[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") el.addEventListener(name.replace(/^on/, ""), value);
    else if (name === "class") el.className = String(value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

export function append(el: Element, children: (Child | Child[])[]): void {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces an element's children. */
export function fill(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

export function table(headers: string[], rows: Child[][], attrs: Record<string, Attr> = {}): HTMLTableElement {
  return h("table", attrs, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

export const link = (href: string, text: string, attrs: Record<string, Attr> = {}) => h("a", { href, ...attrs }, text);

export const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
export const num = (x: number, digits = 3) => (Number.isFinite(x) ? x.toFixed(digits) : "–");

/** A status name without its enum prefix, e.g. JOB_STATUS_RUNNING → running. */
export function statusText(name: string): string {
  return name.replace(/^[A-Z_]*?STATUS_/, "").toLowerCase().replace(/_/g, " ");
}

export function badge(name: string): HTMLSpanElement {
  const text = statusText(name);
  return h("span", { class: `badge s-${text.replace(/ /g, "-")}`, "data-status": text }, text);
}

export function section(title: string, ...children: (Child | Child[])[]): HTMLElement {
  return h("section", {}, h("h2", {}, title), ...children);
}
