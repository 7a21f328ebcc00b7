import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** How a model of the loopback endpoint answers a question (the question text as the prompt carries it). */
export type Behaviour = (question: string, request: Record<string, unknown>) => Reply | Promise<Reply>;

export type Reply =
  | { text: string; finishReason?: "stop" | "length" }
  /** Answer with this HTTP status and an OpenAI-style error body. */
  | { status: number; message: string }
  /** Never answer (the client's timeout ends the request). */
  | { hang: true };

export interface LoopbackEndpoint {
  url: string;
  /** Requests seen per path. */
  requests: { path: string; body: Record<string, unknown> }[];
  close(): Promise<void>;
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
}

/** The question of a completion prompt (`… Question: q [/INST]`) or of a chat request's user message (`… Question: q`). */
export function questionOf(body: Record<string, unknown>): string {
  if (typeof body["prompt"] === "string") return /Question: ([\s\S]*) \[\/INST\]$/.exec(body["prompt"])?.[1] ?? "";
  const messages = (body["messages"] as { role: string; content: string }[] | undefined) ?? [];
  const user = messages.findLast((m) => m.role === "user")?.content ?? "";
  return /Question: ([^\n]*)$/.exec(user)?.[1] ?? user;
}

/**
 * A real HTTP server on 127.0.0.1 speaking the OpenAI subset eval uses (/v1/models, /v1/completions,
 * /v1/chat/completions), with each served model answering by its behaviour; unknown models get vLLM's 404.
 */
export async function startLoopbackEndpoint(models: Record<string, Behaviour>): Promise<LoopbackEndpoint> {
  const requests: LoopbackEndpoint["requests"] = [];
  const hanging = new Set<ServerResponse>();
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const parts: Buffer[] = [];
    req.on("data", (d: Buffer) => parts.push(d));
    req.on("end", () => {
      void (async () => {
        const path = req.url ?? "";
        if (req.method === "GET" && path === "/v1/models") {
          send(res, 200, { object: "list", data: Object.keys(models).map((id) => ({ id, object: "model", owned_by: "test", ...(id.includes("adapter") ? { parent: "base", root: id } : { root: id }) })) });
          return;
        }
        if (req.method !== "POST" || (path !== "/v1/completions" && path !== "/v1/chat/completions")) {
          send(res, 404, { error: { message: `no route ${path}` } });
          return;
        }
        const body = JSON.parse(Buffer.concat(parts).toString("utf8")) as Record<string, unknown>;
        requests.push({ path, body });
        const behaviour = models[String(body["model"])];
        if (behaviour === undefined) {
          send(res, 404, { error: { message: `The model \`${String(body["model"])}\` does not exist.`, type: "NotFoundError", code: 404 } });
          return;
        }
        const reply = await behaviour(questionOf(body), body);
        if ("hang" in reply) {
          hanging.add(res);
          res.on("close", () => hanging.delete(res));
          return;
        }
        if ("status" in reply) {
          send(res, reply.status, { error: { message: reply.message } });
          return;
        }
        const tokens = reply.text.split(/\s+/).filter(Boolean).length;
        const usage = { prompt_tokens: 10, completion_tokens: tokens, total_tokens: 10 + tokens };
        const finish = reply.finishReason ?? "stop";
        if (path === "/v1/completions") {
          send(res, 200, { id: "cmpl", object: "text_completion", model: body["model"], choices: [{ index: 0, text: reply.text, finish_reason: finish }], usage });
        } else {
          send(res, 200, { id: "chat", object: "chat.completion", model: body["model"], choices: [{ index: 0, message: { role: "assistant", content: reply.text }, finish_reason: finish }], usage });
        }
      })().catch((err: unknown) => send(res, 500, { error: { message: String(err) } }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    requests,
    async close() {
      for (const res of hanging) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
