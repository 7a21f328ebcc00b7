import type { PageRequest } from "@ragtune/proto";
import { invalidArgument } from "./errors.js";

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 1000;

export interface Page<T> {
  items: T[];
  nextPageToken: string;
  totalSize: number;
}

export interface TokenBody {
  /** Offset of the next item. */
  o: number;
  /** The filter the token was issued for. */
  f: string;
}

/**
 * Offset paging over a fully ordered list. The token carries the offset and the filter it was
 * issued for, so a token reused with another filter (or a hand-made one) is refused.
 */
export function paginate<T>(all: readonly T[], page: PageRequest | undefined, filter: string): Page<T> {
  const size = page === undefined || page.pageSize === 0 ? DEFAULT_PAGE_SIZE : Math.min(page.pageSize, MAX_PAGE_SIZE);
  const offset = page === undefined || page.pageToken === "" ? 0 : decodePageToken(page.pageToken, filter);
  const items = all.slice(offset, offset + size);
  const next = offset + items.length;
  return {
    items,
    nextPageToken: next < all.length ? encodePageToken({ o: next, f: filter }) : "",
    totalSize: all.length,
  };
}

/** A page token for position `o` of a listing with filter `f` (listings that continue from a store position use it too). */
export function encodePageToken(body: TokenBody): string {
  return Buffer.from(JSON.stringify(body), "utf8").toString("base64url");
}

/** The position a page token carries; InvalidArgument for a foreign token or one issued for another filter. */
export function decodePageToken(token: string, filter: string): number {
  let body: unknown;
  try {
    body = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    body = undefined;
  }
  const ok =
    typeof body === "object" &&
    body !== null &&
    Number.isInteger((body as TokenBody).o) &&
    (body as TokenBody).o >= 0 &&
    typeof (body as TokenBody).f === "string";
  if (!ok) {
    throw invalidArgument("page.page_token", "not a page token issued by this server; pass the next_page_token of the previous response, or empty for the first page");
  }
  if ((body as TokenBody).f !== filter) {
    throw invalidArgument("page.page_token", "the token was issued for other filter parameters, or the listing changed since; repeat the request with the same parameters or start from the first page");
  }
  return (body as TokenBody).o;
}
