import { AssertionError } from "node:assert";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { expectCode } from "../src/index.js";

const notFound = () => Promise.reject(new ConnectError('job "j-1" not found', Code.NotFound));

describe("expectCode", () => {
  it("returns the error when the code and message match (RegExp, substring, or none)", async () => {
    const err = await expectCode(notFound(), Code.NotFound, /^job "j-1"/);
    expect(err.rawMessage).toBe('job "j-1" not found');
    await expectCode(notFound(), Code.NotFound, "not found");
    await expectCode(notFound(), Code.NotFound);
  });

  it("takes a function that throws or rejects", async () => {
    await expectCode(() => {
      throw new ConnectError("bad page_token", Code.InvalidArgument);
    }, Code.InvalidArgument, "page_token");
    await expectCode(notFound, Code.NotFound);
  });

  it("fails on success, on another code, on another message and on an error that is not a ConnectError", async () => {
    await expect(expectCode(Promise.resolve(1), Code.NotFound)).rejects.toThrow(/expected the call to fail with NotFound, it succeeded/);
    await expect(expectCode(notFound(), Code.InvalidArgument)).rejects.toThrow(/expected InvalidArgument, got NotFound: job "j-1" not found/);
    await expect(expectCode(notFound(), Code.NotFound, /collection/)).rejects.toThrow(/matching \/collection\/, got NotFound/);
    await expect(expectCode(notFound(), Code.NotFound, "collection")).rejects.toBeInstanceOf(AssertionError);
    await expect(expectCode(Promise.reject(new TypeError("boom")), Code.Internal)).rejects.toThrow(/expected a ConnectError Internal, got TypeError: boom/);
  });
});
