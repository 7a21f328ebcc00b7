import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { CORRELATION_ID_HEADER, codeName, internalError, invalidArgument, notFound } from "./errors.js";

describe("error helpers", () => {
  it("name the field or resource at fault", () => {
    const bad = invalidArgument("chunk_tokens", "must be between 64 and 4096, got 10");
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.rawMessage).toBe("invalid chunk_tokens: must be between 64 and 4096, got 10");
    expect(bad.metadata.get("x-invalid-field")).toBe("chunk_tokens");
    expect(notFound("dataset version", "v7").rawMessage).toBe('dataset version "v7" not found');
  });

  it("internal errors carry only the correlation id", () => {
    const err = internalError("abc-123");
    expect(err.code).toBe(Code.Internal);
    expect(err.rawMessage).toContain("abc-123");
    expect(err.metadata.get(CORRELATION_ID_HEADER)).toBe("abc-123");
  });

  it("spells codes as gRPC does", () => {
    expect(codeName(undefined)).toBe("OK");
    expect(codeName(Code.DeadlineExceeded)).toBe("DeadlineExceeded");
  });
});
