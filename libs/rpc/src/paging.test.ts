import { create } from "@bufbuild/protobuf";
import { PageRequestSchema } from "@ragtune/proto";
import { Code } from "@connectrpc/connect";
import { expectCode } from "@ragtune/testing";
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

  it("refuses a forged token and a token of another filter", async () => {
    const next = paginate(items, page(10), "a").nextPageToken;
    await expectCode(() => paginate(items, page(10, "!!"), "a"), Code.InvalidArgument, "not a page token issued by this server");
    await expectCode(() => paginate(items, page(10, next), "b"), Code.InvalidArgument, "other filter parameters");
    expect(paginate(items, page(10, next), "a").items[0]).toBe(10);
  });
});
