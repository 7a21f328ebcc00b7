import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** How the endpoint answers a completion: the prompt and the requested model → the answer text. */
export type Answer = (prompt: string, model: string) => string;

export interface ModelEndpoint {
  url: string;
  /** Completion requests seen (bodies), in arrival order. */
  completions: Record<string, unknown>[];
  /** Adapter loads and unloads (vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter), in order. */
  loraCalls: { op: "load" | "unload"; name: string; path?: string }[];
  /** Served model names now: the base model and loaded adapters. */
  served(): string[];
  /** Serve an adapter name (as a load would, without recording a call). */
  loadAdapter(name: string): Promise<void>;
  close(): Promise<void>;
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
}

/**
 * A real HTTP server on 127.0.0.1 speaking the vLLM subset the gateway uses: /v1/models, /v1/completions (plain and
 * SSE-streamed, usage included when asked), /v1/load_lora_adapter and /v1/unload_lora_adapter (a load of a path
 * outside `loadable` fails as vLLM fails on a missing adapter). Unknown models get vLLM's 404.
 */
export async function startModelEndpoint(base: string, answer: Answer, loadable: (path: string) => boolean = () => true): Promise<ModelEndpoint> {
  const completions: Record<string, unknown>[] = [];
  const loraCalls: ModelEndpoint["loraCalls"] = [];
  const adapters = new Set<string>();
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const parts: Buffer[] = [];
    req.on("data", (d: Buffer) => parts.push(d));
    req.on("end", () => {
      const path = req.url ?? "";
      if (req.method === "GET" && path === "/v1/models") {
        send(res, 200, { object: "list", data: [base, ...adapters].map((id) => ({ id, object: "model", root: id, ...(id === base ? {} : { parent: base }) })) });
        return;
      }
      const body = (parts.length === 0 ? {} : JSON.parse(Buffer.concat(parts).toString("utf8"))) as Record<string, unknown>;
      if (path === "/v1/load_lora_adapter" || path === "/v1/unload_lora_adapter") {
        const name = String(body["lora_name"] ?? "");
        if (path === "/v1/load_lora_adapter") {
          const lora = String(body["lora_path"] ?? "");
          loraCalls.push({ op: "load", name, path: lora });
          if (adapters.has(name)) return send(res, 400, { error: { message: `The lora adapter '${name}' has already been loaded.` } });
          if (!loadable(lora)) return send(res, 400, { error: { message: `Loading lora ${name} failed: No adapter found for ${lora}` } });
          adapters.add(name);
          res.writeHead(200).end(`Success: LoRA adapter '${name}' added successfully.`);
        } else {
          loraCalls.push({ op: "unload", name });
          if (!adapters.delete(name)) return send(res, 404, { error: { message: `The lora adapter '${name}' cannot be found.` } });
          res.writeHead(200).end(`Success: LoRA adapter '${name}' removed successfully.`);
        }
        return;
      }
      if (req.method !== "POST" || path !== "/v1/completions") return send(res, 404, { error: { message: `no route ${path}` } });
      completions.push(body);
      const model = String(body["model"] ?? base);
      if (model !== base && !adapters.has(model)) {
        return send(res, 404, { error: { message: `The model \`${model}\` does not exist.`, type: "NotFoundError", code: 404 } });
      }
      const text = answer(String(body["prompt"]), model);
      const words = text.split(/(?<=\s)/);
      const usage = { prompt_tokens: 10, completion_tokens: words.length, total_tokens: 10 + words.length };
      if (body["stream"] !== true) {
        return send(res, 200, { id: "cmpl", object: "text_completion", model, choices: [{ index: 0, text, finish_reason: "stop" }], usage });
      }
      res.writeHead(200, { "content-type": "text/event-stream" });
      words.forEach((w, i) => {
        const chunk = { id: "cmpl", object: "text_completion", model, choices: [{ index: 0, text: w, finish_reason: i === words.length - 1 ? "stop" : null }] };
        res.write(`data: ${JSON.stringify(chunk)}\n\n`);
      });
      const streamOptions = body["stream_options"] as { include_usage?: boolean } | undefined;
      if (streamOptions?.include_usage === true) res.write(`data: ${JSON.stringify({ id: "cmpl", object: "text_completion", model, choices: [], usage })}\n\n`);
      res.end("data: [DONE]\n\n");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    completions,
    loraCalls,
    served: () => [base, ...adapters],
    loadAdapter: async (name) => {
      adapters.add(name);
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
