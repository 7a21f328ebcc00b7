/**
 * A loopback OpenAI-compatible chat endpoint for the benchmarks, in a process of its own (so its work never competes
 * with the measured client on the event loop): a fixed latency per request and seeded injected faults.
 *
 * Faults (a seeded draw per request at `faultRate`, the four kinds equally likely):
 *   500             after the full latency (the server worked, then failed)
 *   429             at once (a rate limiter rejects before any work), with `retry-after-ms: 100` and `retry-after: 1`
 *   malformed JSON  after the full latency: a 200 whose content is cut mid-string (not JSON)
 *   dropped         after the full latency: headers and half the body, then the socket is destroyed
 * With `faultAt: "immediate"` the faults a server can send before doing any work come at once: the 500 (an engine or
 * proxy rejecting load), the 429 and the dropped connection (headers and half a body at once). Malformed JSON still
 * comes after the full latency: it is a generated body, so the server spent the generation on it.
 *
 * Every request is traced (arrival and close, wall-clock ms): `trace()` hands over those since the last call, for
 * the benches' per-phase breakdown (when the wire was busy, how many slots were used).
 *
 * Answers (`answer`):
 *   "id"        the user message is `question <i>`; the content is `{"id": i, "answer": "answer i"}`
 *   "qa-pairs"  the dataset generator's prompt (the chunk between `<<<` and `>>>`, N pairs asked through the guided-JSON
 *               schema's minItems); the content is N pairs whose answers are the chunk's own sentences
 */
import { fork, type ChildProcess } from "node:child_process";
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { seededRandom } from "@ragtune/testing";

export type Fault = "500" | "429" | "malformed" | "dropped";
export const FAULTS: Fault[] = ["500", "429", "malformed", "dropped"];

export interface EndpointConfig {
  latencyMs: number;
  faultRate: number;
  /**
   * "latency": faults other than 429 come after the full latency; "immediate": 500, 429 and dropped at once, malformed
   * JSON (a generated body) after the full latency.
   */
  faultAt: "latency" | "immediate";
  seed: number;
  answer: "id" | "qa-pairs";
}

export interface EndpointStats {
  requests: number;
  faults: Record<Fault, number>;
  maxInFlight: number;
  withoutGuidedFields: number;
}

interface ChatBody {
  messages: { content: string }[];
  response_format?: { json_schema?: { schema?: { properties?: { pairs?: { minItems?: number } } } } };
  guided_json?: unknown;
}

const KINDS = ["factual", "conceptual", "comparison"];

/** The content of a good answer, and a malformed cut of it. */
function answerFor(body: ChatBody, mode: EndpointConfig["answer"]): string {
  const user = body.messages.at(-1)!.content;
  if (mode === "id") {
    const id = Number(/question (\d+)/.exec(user)![1]);
    return JSON.stringify({ id, answer: `answer ${id}` });
  }
  const chunk = user.slice(user.indexOf("<<<\n") + 4, user.lastIndexOf("\n>>>"));
  const n = body.response_format?.json_schema?.schema?.properties?.pairs?.minItems ?? 3;
  const sentences = chunk
    .split(/(?<=\.)\s+/)
    .map((s) => s.trim())
    .filter((s) => s.endsWith(".") && s.split(" ").length >= 6);
  const pairs = Array.from({ length: n }, (_, i) => {
    const answer = sentences[i % Math.max(1, sentences.length)] ?? chunk.trim();
    return { kind: KINDS[i % KINDS.length], question: `What does the passage say about ${answer.split(" ").slice(0, 4).join(" ").toLowerCase()} (${i + 1})?`, answer };
  });
  return JSON.stringify({ pairs });
}

/** One request as the endpoint saw it: wall-clock ms (fractional) when it arrived and when its response closed. */
export interface TracedRequest {
  arrivedMs: number;
  closedMs: number;
  fault: Fault | "";
}

const wallMs = () => performance.timeOrigin + performance.now();

function serve(config: EndpointConfig): void {
  const random = seededRandom(config.seed);
  const stats: EndpointStats = { requests: 0, faults: { "500": 0, "429": 0, malformed: 0, dropped: 0 }, maxInFlight: 0, withoutGuidedFields: 0 };
  const trace: TracedRequest[] = [];
  let inFlight = 0;
  const json = (res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}) => {
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...headers });
    res.end(body);
  };
  const completion = (content: string) =>
    JSON.stringify({
      id: "chatcmpl-bench",
      object: "chat.completion",
      created: 0,
      model: "bench",
      choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
      usage: { prompt_tokens: 24, completion_tokens: 12, total_tokens: 36 },
    });

  const server = createServer((req, res) => {
    inFlight++;
    stats.maxInFlight = Math.max(stats.maxInFlight, inFlight);
    const traced: TracedRequest = { arrivedMs: wallMs(), closedMs: 0, fault: "" };
    trace.push(traced);
    res.on("close", () => {
      inFlight--;
      traced.closedMs = wallMs();
    });
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      stats.requests++;
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as ChatBody;
      if (!body.response_format?.json_schema?.schema || !body.guided_json) stats.withoutGuidedFields++;
      const content = answerFor(body, config.answer);
      const fault = random() < config.faultRate ? FAULTS[Math.floor(random() * FAULTS.length)]! : undefined;
      if (fault) {
        stats.faults[fault]++;
        traced.fault = fault;
      }
      if (fault === "429") {
        json(res, 429, JSON.stringify({ error: { message: "rate limited (injected)" } }), { "retry-after-ms": "100", "retry-after": "1" });
        return;
      }
      setTimeout(() => {
        if (fault === "500") json(res, 500, JSON.stringify({ error: { message: "engine error (injected)" } }));
        else if (fault === "malformed") json(res, 200, completion(content.slice(0, content.length - 5)));
        else if (fault === "dropped") {
          const full = completion(content);
          res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(full) });
          res.write(full.slice(0, full.length >> 1), () => res.socket?.destroy());
        } else json(res, 200, completion(content));
      }, fault !== undefined && fault !== "malformed" && config.faultAt === "immediate" ? 0 : config.latencyMs);
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, "127.0.0.1", () => process.send!({ port: (server.address() as AddressInfo).port }));
  process.on("message", (message) => {
    if (message === "stats") process.send!({ stats });
    // The requests traced since the last "trace" message (then forgotten).
    if (message === "trace") process.send!({ trace: trace.splice(0) });
  });
}

/** Starts the endpoint in a child process; `stats()` asks it for its counts. */
export async function startEndpoint(
  config: EndpointConfig,
): Promise<{ child: ChildProcess; url: string; stats: () => Promise<EndpointStats>; trace: () => Promise<TracedRequest[]> }> {
  const child = fork(fileURLToPath(import.meta.url), ["--serve", JSON.stringify(config)], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const port = await new Promise<number>((resolve, reject) => {
    child.once("message", (m) => resolve((m as { port: number }).port));
    child.once("exit", (code) => reject(new Error(`endpoint exited with ${code}`)));
  });
  return {
    child,
    url: `http://127.0.0.1:${port}/v1`,
    stats: () =>
      new Promise((resolve) => {
        child.once("message", (m) => resolve((m as { stats: EndpointStats }).stats));
        child.send("stats");
      }),
    trace: () =>
      new Promise((resolve) => {
        child.once("message", (m) => resolve((m as { trace: TracedRequest[] }).trace));
        child.send("trace");
      }),
  };
}

/** Endpoint counts between two snapshots (the maximum in flight covers both). */
export function statsSince(after: EndpointStats, before: EndpointStats): EndpointStats {
  const faults = { ...after.faults };
  for (const f of FAULTS) faults[f] -= before.faults[f];
  return { requests: after.requests - before.requests, faults, maxInFlight: after.maxInFlight, withoutGuidedFields: after.withoutGuidedFields - before.withoutGuidedFields };
}

/** Requests that held a slot for the whole endpoint latency: every good answer, and the slow faults (malformed JSON always). */
export function fullLatencyRequests(stats: EndpointStats, faultAt: EndpointConfig["faultAt"]): number {
  const f = stats.faults;
  return faultAt === "immediate" ? stats.requests - (f["500"] + f["429"] + f.dropped) : stats.requests - f["429"];
}

if (process.argv[2] === "--serve" && process.argv[1] === fileURLToPath(import.meta.url)) serve(JSON.parse(process.argv[3]!) as EndpointConfig);
