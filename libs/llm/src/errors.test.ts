import { describe, expect, it } from "vitest";
import { kindForStatus, LlmError, serverMessageOf } from "./errors.js";

describe("errors", () => {
  it("maps statuses to kinds, and kinds to retryable", () => {
    expect([429, 500, 503, 401, 403, 400, 404, 422].map(kindForStatus)).toEqual([
      "rate_limited",
      "server_error",
      "server_error",
      "unauthorized",
      "unauthorized",
      "bad_request",
      "bad_request",
      "bad_request",
    ]);
    expect(new LlmError("timeout", "x").retryable).toBe(true);
    expect(new LlmError("bad_request", "x").retryable).toBe(false);
    expect(new LlmError("server_error", "x", { retryable: false }).retryable).toBe(false);
  });

  it("finds the server's message in OpenAI, vLLM and FastAPI error bodies", () => {
    expect(serverMessageOf('{"error":{"message":"bad model","type":"NotFoundError","code":404}}')).toBe("bad model");
    expect(serverMessageOf('{"object":"error","message":"old vllm","code":400}')).toBe("old vllm");
    expect(serverMessageOf('{"detail":[{"loc":["body","messages"],"msg":"field required"}]}')).toBe('[{"loc":["body","messages"],"msg":"field required"}]');
    expect(serverMessageOf('{"error":"Unauthorized"}')).toBe("Unauthorized");
    expect(serverMessageOf("<html>502 Bad Gateway</html>")).toBe("<html>502 Bad Gateway</html>");
    expect(serverMessageOf("   ")).toBeUndefined();
    expect(serverMessageOf("x".repeat(5000))!.length).toBe(1001);
  });
});
