import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createLogger } from "@ragtune/logger";
import { removeTempDir, tempDir } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveHyperparameters, toWorkerHyperparameters } from "./hyperparameters.js";
import { type WorkerEvent, WorkerProcess, type WorkerSpec } from "./worker-process.js";

// A stand-in worker speaking the same JSON-lines protocol, so the supervisor's handling of crashes, hangs and
// cancel is tested in milliseconds. The real worker runs in the integration tests (test/).
const FAKE_WORKER = String.raw`
import json, os, signal, sys, time
cmd = json.loads(sys.stdin.readline())
spec = cmd["spec"]
mode = spec["model_dir"]
seq = 0
def emit(event_type, **fields):
    global seq
    seq += 1
    sys.stdout.write(json.dumps({"type": event_type, "seq": seq, "job_id": spec["job_id"], **fields}) + "\n")
    sys.stdout.flush()
print("fake worker starting in mode " + mode, file=sys.stderr, flush=True)
emit("validated", rows=3, val_rows=0, steps_planned=2)
if mode == "hang":
    time.sleep(60)
emit("started", steps_planned=2)
print("this line is not protocol", flush=True)
emit("metrics", step=1, epoch=0.5, train_loss=2.5, learning_rate=0.0002, tokens_per_second=10.0, peak_memory_bytes=1)
if mode == "crash":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "cancel":
    line = sys.stdin.readline()
    assert json.loads(line) == {"type": "cancel"}, line
    emit("checkpoint", step=1, path=spec["output_dir"] + "/checkpoints/checkpoint-1")
    emit("cancelled", checkpoint_path=spec["output_dir"] + "/checkpoints/checkpoint-1", step=1)
    sys.exit(0)
if mode == "user_error":
    emit("failed", kind="user_error", reason="INVALID_UTF8", field="train_file", line=3,
         message="train_file /data/train.jsonl line 3: not valid UTF-8 (byte 0xe9 at byte 17 of the line)")
    sys.exit(2)
if mode.startswith("failed:"):  # failed:<kind>:<json of the extra fields>
    _, kind, extra = mode.split(":", 2)
    emit("failed", kind=kind, message="it failed", **json.loads(extra))
    sys.exit(2 if kind == "user_error" else 1)
emit("metrics", step=2, epoch=1.0, train_loss=2.0, learning_rate=0.0001, tokens_per_second=10.0, peak_memory_bytes=1)
emit("checkpoint", step=2, path=spec["output_dir"] + "/checkpoints/checkpoint-2")
emit("finished", steps=2, final_loss=2.0, adapter_dir=spec["output_dir"] + "/adapter")
`;

let dir: string;
const logger = createLogger({ svc: "trainer-test", level: "silent" });

beforeAll(async () => {
  dir = await tempDir("fake-worker");
  await mkdir(join(dir, "ragtune_worker"));
  await writeFile(join(dir, "ragtune_worker", "__init__.py"), "");
  await writeFile(join(dir, "ragtune_worker", "__main__.py"), FAKE_WORKER);
});
afterAll(() => removeTempDir(dir));

function spec(mode: string): WorkerSpec {
  return {
    ...toWorkerHyperparameters(resolveHyperparameters(undefined)),
    job_id: `job-${mode}`,
    device: "auto",
    model_dir: mode,
    train_file: "/data/train.jsonl",
    val_file: null,
    output_dir: "/work/out",
    resume_from_checkpoint: null,
    init_adapter: null,
  };
}

function start(mode: string, opts: { heartbeatTimeoutMs?: number; onEvent?: (e: WorkerEvent, w: WorkerProcess) => void } = {}) {
  const events: WorkerEvent[] = [];
  let worker: WorkerProcess | undefined;
  worker = WorkerProcess.start({
    python: "python3",
    workerDir: dir,
    spec: spec(mode),
    logger,
    heartbeatTimeoutMs: opts.heartbeatTimeoutMs ?? 10_000,
    onEvent: (e) => {
      events.push(e);
      opts.onEvent?.(e, worker!);
    },
  });
  return { worker, events };
}

describe("WorkerProcess", () => {
  it("passes the spec, delivers typed events in order and ends finished", async () => {
    const { worker, events } = start("ok");
    const outcome = await worker.done;
    expect(outcome.type).toBe("finished");
    expect(events.map((e) => e.type)).toEqual(["validated", "started", "metrics", "metrics", "checkpoint", "finished"]);
    expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(events.every((e) => e.job_id === "job-ok")).toBe(true);
    if (outcome.type === "finished") expect(outcome.event.adapter_dir).toBe("/work/out/adapter");
  });

  it("forwards cancel and ends cancelled with the checkpoint", async () => {
    const { worker, events } = start("cancel", { onEvent: (e, w) => e.type === "metrics" && w.cancel() });
    const outcome = await worker.done;
    expect(outcome).toMatchObject({ type: "cancelled", event: { step: 1, checkpoint_path: "/work/out/checkpoints/checkpoint-1" } });
    expect(events.map((e) => e.type)).toContain("checkpoint");
  });

  it("reports the worker's own user error with its reason and the request field to blame", async () => {
    const outcome = await start("user_error").worker.done;
    expect(outcome).toEqual({
      type: "failed",
      kind: "user_error",
      reason: "INVALID_UTF8",
      field: "dataset_files.train_path",
      crashed: false,
      message: "train_file /data/train.jsonl line 3: not valid UTF-8 (byte 0xe9 at byte 17 of the line)",
    });
  });

  it.each([
    ["user_error", { reason: "INVALID_VALUE", field: "lora_r" }, { reason: "INVALID_VALUE", field: "hyperparameters.rank" }],
    [
      "user_error",
      { reason: "UNKNOWN_TARGET_MODULE", field: "target_modules[1]" },
      { reason: "UNKNOWN_TARGET_MODULE", field: "hyperparameters.target_modules[1]" },
    ],
    ["user_error", { reason: "ROW_TOO_LONG", field: "val_file", line: 9 }, { reason: "ROW_TOO_LONG", field: "dataset_files.val_path" }],
    ["user_error", { reason: "INVALID_MODEL", field: "model_dir" }, { reason: "INVALID_MODEL", field: "base_model" }],
    // Fields the service sets itself are not the user's to fix: no field.
    ["user_error", { reason: "INVALID_CHECKPOINT", field: "resume_from_checkpoint" }, { reason: "INVALID_CHECKPOINT", field: "" }],
    ["system_error", { reason: "MISSING_PACKAGE" }, { reason: "MISSING_PACKAGE", field: "" }],
    // A worker that names no reason, or one that is not UPPER_SNAKE_CASE.
    ["system_error", {}, { reason: "WORKER_REPORTED", field: "" }],
    ["user_error", { reason: "bad reason!", field: 7 }, { reason: "WORKER_REPORTED", field: "" }],
  ] as const)("passes a %s's reason and field through (%j)", async (kind, extra, expected) => {
    const outcome = await start(`failed:${kind}:${JSON.stringify(extra)}`).worker.done;
    expect(outcome).toEqual({ type: "failed", kind, message: "it failed", crashed: false, ...expected });
  });

  it("reports a worker killed mid-run as a crash (system error)", async () => {
    const outcome = await start("crash").worker.done;
    expect(outcome).toMatchObject({ type: "failed", kind: "system_error", reason: "WORKER_EXITED", field: "", crashed: true });
    if (outcome.type === "failed") expect(outcome.message).toContain("SIGKILL");
  });

  it("kills a worker that stops sending events and reports a system error", async () => {
    // Long enough for the interpreter to start on a loaded machine; the fake then sleeps for a minute.
    const { worker } = start("hang", { heartbeatTimeoutMs: 4_000 });
    const outcome = await worker.done;
    expect(outcome).toMatchObject({ type: "failed", kind: "system_error", reason: "HEARTBEAT_TIMEOUT", crashed: true });
  });

  it("kills the worker when an event handler fails, and rejects", async () => {
    const { worker } = start("hang", {
      onEvent: () => {
        throw new Error("kv unavailable");
      },
    });
    await expect(worker.done).rejects.toThrow("kv unavailable");
  });

  it("reports a missing interpreter clearly", async () => {
    const worker = WorkerProcess.start({
      python: join(dir, "no-such-python"),
      workerDir: dir,
      spec: spec("ok"),
      logger,
      heartbeatTimeoutMs: 1000,
      onEvent: () => {},
    });
    const outcome = await worker.done;
    expect(outcome).toMatchObject({ type: "failed", reason: "SPAWN_FAILED" });
    if (outcome.type === "failed") expect(outcome.message).toContain("TRAINER_PYTHON");
  });
});
