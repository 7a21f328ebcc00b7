import { Counter, Gauge, Histogram, Registry } from "prom-client";

/**
 * The server's Prometheus metrics, named as vLLM names its own (`vllm:*`) so one dashboard reads both, plus the
 * local server's admission and HTTP counters.
 */
export class ModelServerMetrics {
  readonly registry = new Registry();
  readonly running = new Gauge({
    name: "vllm:num_requests_running",
    help: "Requests generating right now.",
    registers: [this.registry],
  });
  readonly waiting = new Gauge({
    name: "vllm:num_requests_waiting",
    help: "Requests waiting for a free sequence.",
    registers: [this.registry],
  });
  readonly promptTokens = new Counter({
    name: "vllm:prompt_tokens_total",
    help: "Prompt tokens processed.",
    labelNames: ["model_name"],
    registers: [this.registry],
  });
  readonly generationTokens = new Counter({
    name: "vllm:generation_tokens_total",
    help: "Tokens generated.",
    labelNames: ["model_name"],
    registers: [this.registry],
  });
  readonly succeeded = new Counter({
    name: "vllm:request_success_total",
    help: "Generations finished, by finish reason.",
    labelNames: ["model_name", "finished_reason"],
    registers: [this.registry],
  });
  readonly timeToFirstToken = new Histogram({
    name: "vllm:time_to_first_token_seconds",
    help: "From admission to the first generated text, in seconds.",
    labelNames: ["model_name"],
    buckets: [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10],
    registers: [this.registry],
  });
  readonly e2eLatency = new Histogram({
    name: "vllm:e2e_request_latency_seconds",
    help: "From arrival to the last token, queue wait included, in seconds.",
    labelNames: ["model_name"],
    buckets: [0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60],
    registers: [this.registry],
  });
  readonly iterationTokens = new Histogram({
    name: "vllm:iteration_tokens_total",
    help: "Tokens per decoding step (prompt and generated tokens of all sequences in the batch).",
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
    registers: [this.registry],
  });
  readonly rejected = new Counter({
    name: "model_server_requests_rejected_total",
    help: "Generation requests refused with 429 because every sequence was busy and the queue was full.",
    registers: [this.registry],
  });
  readonly http = new Counter({
    name: "model_server_http_requests_total",
    help: "HTTP requests answered, by route and status.",
    labelNames: ["route", "status"],
    registers: [this.registry],
  });
}
