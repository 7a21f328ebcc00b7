// The event catalog: every event message of ragtune.events.v1 declares one subject (or one per verb)
// beside its message, the subjects follow ragtune.<area>.<entity>.<verb>, no two messages share one,
// and the README's table is the catalog.
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { create, createFileRegistry, hasOption, setExtension, type DescFile, type DescMessage } from "@bufbuild/protobuf";
import { FieldDescriptorProto_Label, FieldDescriptorProto_Type, FileDescriptorProtoSchema, MessageOptionsSchema } from "@bufbuild/protobuf/wkt";
import * as contracts from "@ragtune/proto";
import {
  AdapterPromotedSchema,
  CollectionDeletedSchema,
  DocumentChunkedSchema,
  event_subject,
  TrainerJobEventKind,
  TrainerJobEventSchema,
} from "@ragtune/proto";
import { describe, expect, it } from "vitest";
import {
  buildEventCatalog,
  eventCatalog,
  eventFilterSubject,
  eventMessages,
  EVENTS_PACKAGE,
  eventSubject,
  type EventCatalogEntry,
  type EventVerb,
} from "./events.js";

const readmePath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../README.md");

function isFileDesc(value: unknown): value is DescFile {
  return typeof value === "object" && value !== null && (value as { kind?: unknown }).kind === "file";
}

/** Areas that publish events: the package area of every ragtune service (ingest, dataset, …). */
const serviceAreas = new Set(
  Object.values(contracts)
    .filter(isFileDesc)
    .filter((f) => f.services.length > 0 && f.proto.package.startsWith("ragtune."))
    .map((f) => f.proto.package.split(".")[1]),
);

/** The catalog as a Markdown table (subject → message), as the README shows it. */
function catalogTable(entries: readonly EventCatalogEntry[]): string {
  const rows = entries.map((e) => {
    const subject =
      e.verbField === undefined
        ? e.pattern
        : `${e.pattern.slice(0, e.pattern.lastIndexOf("."))}.{${e.subjects.map((s) => s.slice(s.lastIndexOf(".") + 1)).join(",")}}`;
    const message = e.typeName.slice(EVENTS_PACKAGE.length + 1);
    return `| \`${subject}\` | \`${message}\`${e.verbField === undefined ? "" : ` (verb = \`${e.verbField}\`)`} |`;
  });
  return ["| subject | message |", "|---|---|", ...rows].join("\n");
}

/** Synthetic event messages, declared like events.proto does, to prove the catalog's checks fail. */
function syntheticEvents(messages: { name: string; subject?: string; kindField?: "enum" | "string"; kindName?: string }[]): DescMessage[] {
  const file = create(FileDescriptorProtoSchema, {
    name: "synthetic/v1/events.proto",
    package: "synthetic.v1",
    syntax: "proto3",
    enumType: [
      {
        name: "ThingKind",
        value: [
          { name: "THING_KIND_UNSPECIFIED", number: 0 },
          { name: "THING_KIND_MADE", number: 1 },
          { name: "THING_KIND_BROKEN", number: 2 },
        ],
      },
    ],
    messageType: messages.map((m) => {
      const options = create(MessageOptionsSchema);
      if (m.subject !== undefined) setExtension(options, event_subject, m.subject);
      return {
        name: m.name,
        options,
        field: [
          { name: "event_id", number: 1, type: FieldDescriptorProto_Type.STRING, label: FieldDescriptorProto_Label.OPTIONAL, jsonName: "eventId" },
          ...(m.kindField === undefined
            ? []
            : [
                m.kindField === "enum"
                  ? { name: m.kindName ?? "kind", number: 2, type: FieldDescriptorProto_Type.ENUM, typeName: ".synthetic.v1.ThingKind", label: FieldDescriptorProto_Label.OPTIONAL }
                  : { name: m.kindName ?? "kind", number: 2, type: FieldDescriptorProto_Type.STRING, label: FieldDescriptorProto_Label.OPTIONAL },
              ]),
        ],
      };
    }),
  });
  const registry = createFileRegistry(file, () => undefined);
  return messages.map((m) => {
    const desc = registry.getMessage(`synthetic.v1.${m.name}`);
    if (desc === undefined) throw new Error(`synthetic message ${m.name} missing`);
    return desc;
  });
}

describe("event catalog", () => {
  it("lists every event of ragtune.events.v1 with its declared subject", () => {
    expect(eventCatalog().map((e) => [e.typeName.slice(EVENTS_PACKAGE.length + 1), e.pattern])).toEqual([
      ["DocumentChunked", "ragtune.ingest.document.chunked"],
      ["DocumentDeleted", "ragtune.ingest.document.deleted"],
      ["CollectionDeleted", "ragtune.ingest.collection.deleted"],
      ["IngestRunCompleted", "ragtune.ingest.run.completed"],
      ["DatasetVersionBuilt", "ragtune.dataset.version.built"],
      ["DatasetVersionFailed", "ragtune.dataset.version.failed"],
      ["TrainerJobEvent", "ragtune.trainer.job.{kind}"],
      ["EvalRunCompleted", "ragtune.eval.run.completed"],
      ["EvalGatePassed", "ragtune.eval.gate.passed"],
      ["AdapterPromoted", "ragtune.gateway.adapter.promoted"],
    ]);
    const trainer = eventCatalog().find((e) => e.typeName === TrainerJobEventSchema.typeName);
    expect(trainer?.verbField).toBe("kind");
    expect(trainer?.subjects).toEqual(
      ["queued", "running", "progress", "checkpoint", "succeeded", "failed", "cancelled"].map((v) => `ragtune.trainer.job.${v}`),
    );
  });

  it("has a subject on every message of ragtune.events.v1, each ragtune.<service area>.<entity>.<verb>, none shared", () => {
    const messages = eventMessages();
    expect(messages.length).toBeGreaterThan(0);
    for (const m of messages) expect(hasOption(m, event_subject), `${m.typeName} declares no (event_subject)`).toBe(true);
    expect(serviceAreas).toEqual(new Set(["ingest", "dataset", "trainer", "eval", "gateway"]));
    const subjects = eventCatalog().flatMap((e) => e.subjects);
    expect(new Set(subjects).size, "a subject is claimed twice").toBe(subjects.length);
    for (const subject of subjects) {
      const tokens = subject.split(".");
      expect(tokens, subject).toHaveLength(4);
      expect(tokens[0], subject).toBe("ragtune");
      expect(serviceAreas.has(tokens[1] ?? ""), `${subject}: ${tokens[1]} is not a service's area`).toBe(true);
      for (const t of tokens) expect(t, subject).toMatch(/^[a-z][a-z0-9_]*$/);
    }
  });

  it("rejects a message without a subject", () => {
    const events = syntheticEvents([{ name: "ThingMade", subject: "ragtune.ingest.thing.made" }, { name: "ThingLost" }]);
    expect(() => buildEventCatalog(events)).toThrow("event synthetic.v1.ThingLost declares no subject");
  });

  it("rejects two messages claiming the same subject, also through a verb", () => {
    const same = syntheticEvents([
      { name: "ThingMade", subject: "ragtune.ingest.thing.made" },
      { name: "ThingMadeAgain", subject: "ragtune.ingest.thing.made" },
    ]);
    expect(() => buildEventCatalog(same)).toThrow("events synthetic.v1.ThingMade and synthetic.v1.ThingMadeAgain both claim the subject ragtune.ingest.thing.made");
    const viaVerb = syntheticEvents([
      { name: "ThingEvent", subject: "ragtune.ingest.thing.{kind}", kindField: "enum" },
      { name: "ThingBroken", subject: "ragtune.ingest.thing.broken" },
    ]);
    expect(() => buildEventCatalog(viaVerb)).toThrow("both claim the subject ragtune.ingest.thing.broken");
  });

  it.each([
    "ragtune.ingest.chunked",
    "ragtune.ingest.document.chunked.again",
    "other.ingest.document.chunked",
    "ragtune.Ingest.document.chunked",
    "ragtune.ingest.*.chunked",
    "ragtune.ingest.document.>",
    "ragtune.ingest..chunked",
    "",
  ])("rejects the subject %j", (subject) => {
    const events = syntheticEvents([{ name: "ThingMade", subject }]);
    expect(() => buildEventCatalog(events)).toThrow(/expected ragtune\.<area>\.<entity>\.<verb>/);
  });

  it("rejects a verb pattern whose field is missing, not an enum, or not `kind`", () => {
    const missing = syntheticEvents([{ name: "ThingEvent", subject: "ragtune.ingest.thing.{kind}" }]);
    expect(() => buildEventCatalog(missing)).toThrow("{kind} must name an enum field");
    const notEnum = syntheticEvents([{ name: "ThingEvent", subject: "ragtune.ingest.thing.{kind}", kindField: "string" }]);
    expect(() => buildEventCatalog(notEnum)).toThrow("{kind} must name an enum field");
    const otherName = syntheticEvents([{ name: "ThingEvent", subject: "ragtune.ingest.thing.{state}", kindField: "enum", kindName: "state" }]);
    expect(() => buildEventCatalog(otherName)).toThrow("the verb field must be called kind");
  });

  it("derives a verb subject from the enum value without its prefix", () => {
    const [thing] = syntheticEvents([{ name: "ThingEvent", subject: "ragtune.ingest.thing.{kind}", kindField: "enum" }]);
    expect(buildEventCatalog([thing!])[0]?.subjects).toEqual(["ragtune.ingest.thing.made", "ragtune.ingest.thing.broken"]);
  });

  it("derives the subject of an event from its message (TrainerJobEvent: from its kind)", () => {
    expect(eventSubject(DocumentChunkedSchema, create(DocumentChunkedSchema))).toBe("ragtune.ingest.document.chunked");
    expect(eventSubject(TrainerJobEventSchema, create(TrainerJobEventSchema, { kind: TrainerJobEventKind.SUCCEEDED }))).toBe(
      "ragtune.trainer.job.succeeded",
    );
    expect(eventSubject(TrainerJobEventSchema, create(TrainerJobEventSchema, { kind: TrainerJobEventKind.QUEUED }))).toBe("ragtune.trainer.job.queued");
    expect(() => eventSubject(TrainerJobEventSchema, create(TrainerJobEventSchema))).toThrow(
      /kind is 0, which names no verb of ragtune\.trainer\.job\.\{kind\}; set it to one of queued, running/,
    );
    expect(() => eventSubject(TrainerJobEventSchema, create(TrainerJobEventSchema, { kind: 99 as TrainerJobEventKind }))).toThrow(/kind is 99/);
    expect(() => eventSubject(MessageOptionsSchema, create(MessageOptionsSchema))).toThrow(
      "google.protobuf.MessageOptions is not in the event catalog",
    );
  });

  it("derives a subscription's filter from the schema and an optional verb", () => {
    expect(eventFilterSubject(CollectionDeletedSchema)).toBe("ragtune.ingest.collection.deleted");
    expect(eventFilterSubject(AdapterPromotedSchema)).toBe("ragtune.gateway.adapter.promoted");
    expect(eventFilterSubject(TrainerJobEventSchema)).toBe("ragtune.trainer.job.*");
    expect(eventFilterSubject(TrainerJobEventSchema, TrainerJobEventKind.CHECKPOINT)).toBe("ragtune.trainer.job.checkpoint");
    expect(() => eventFilterSubject(TrainerJobEventSchema, TrainerJobEventKind.UNSPECIFIED)).toThrow(
      "0 is not a verb of ragtune.events.v1.TrainerJobEvent",
    );
    // A message with one subject has no verb: the type says so, and so does the runtime.
    const noVerb: EventVerb<typeof DocumentChunkedSchema> = 1 as never;
    expect(() => eventFilterSubject(DocumentChunkedSchema, noVerb)).toThrow("goes to one subject (ragtune.ingest.document.chunked)");
  });

  it("is the table in the README", () => {
    const readme = readFileSync(readmePath, "utf8");
    const section = /<!-- event-catalog:start[^>]*-->\n([\s\S]*?)\n<!-- event-catalog:end -->/.exec(readme);
    expect(section, "README.md has no <!-- event-catalog:start --> … <!-- event-catalog:end --> section").not.toBeNull();
    expect(section?.[1], "README.md's event table differs from eventCatalog(); paste the expected table").toBe(catalogTable(eventCatalog()));
  });
});
