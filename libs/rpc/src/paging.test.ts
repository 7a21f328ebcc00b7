import { create } from "@bufbuild/protobuf";
import { PageRequestSchema } from "@ragtune/proto";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { paginate } from "./paging.js";

const items = Array.from({ length: 120 }, (_, i) => i);
const page = (pageSize: number, pageToken = "") => create(PageRequestSchema, { pageSize, pageToken });

describe("paginate", () => {
  it("walks every item once with the default size of 50", () => {
    const seen: number[] = [];
    let token = "";
    let pages = 0;
    do {
      const p = paginate(items, page(0, token), "f");
      expect(p.totalSize).toBe(120);
      seen.push(...p.items);
      token = p.nextPageToken;
      pages++;
    } while (token !== "");
    expect(seen).toEqual(items);
    expect(pages).toBe(3);
  });

  it("clamps the page size to 1000", () => {
    const many = Array.from({ length: 1500 }, (_, i) => i);
    expect(paginate(many, page(5000), "f").items).toHaveLength(1000);
  });

  it("refuses a forged token and a token of another filter", () => {
    const next = paginate(items, page(10), "a").nextPageToken;
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return ConnectError.from(e).code;
      }
      return undefined;
    };
    expect(code(() => paginate(items, page(10, "!!"), "a"))).toBe(Code.InvalidArgument);
    expect(code(() => paginate(items, page(10, next), "b"))).toBe(Code.InvalidArgument);
    expect(paginate(items, page(10, next), "a").items[0]).toBe(10);
  });
});
