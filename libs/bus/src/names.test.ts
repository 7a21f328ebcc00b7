import { describe, expect, it } from "vitest";
import { defaultRetryDelayMs } from "./consumers.js";
import { assertEventSubject } from "./events.js";
import { workQueueNames } from "./work-queue.js";

describe("event subjects", () => {
  it("accepts ragtune.<area>.<entity>.<verb>", () => {
    expect(() => assertEventSubject("ragtune.ingest.document.chunked")).not.toThrow();
    expect(() => assertEventSubject("ragtune.trainer.job.progress")).not.toThrow();
  });
  it.each(["ragtune.ingest.chunked", "other.ingest.document.chunked", "ragtune.ingest.*.chunked", "ragtune.ingest.document.>", "ragtune.Ingest.document.chunked", "ragtune.ingest..chunked"])(
    "rejects %s",
    (subject) => {
      expect(() => assertEventSubject(subject)).toThrow(/ragtune\.<area>\.<entity>\.<verb>/);
    },
  );
});

describe("work queue names", () => {
  it("maps kebab-case names to stream and subject", () => {
    expect(workQueueNames("generation-batches")).toEqual({ stream: "WORK_GENERATION_BATCHES", subject: "work.generation-batches" });
  });
  it.each(["", "Jobs", "a.b", "a b", "-a", "a-"])("rejects %j", (name) => {
    expect(() => workQueueNames(name)).toThrow(/kebab-case/);
  });
});

describe("retry delay", () => {
  it("doubles from 1 s and caps at 60 s", () => {
    expect([1, 2, 3, 4, 7, 8, 20].map(defaultRetryDelayMs)).toEqual([1_000, 2_000, 4_000, 8_000, 60_000, 60_000, 60_000]);
  });
});
