// Rules every ragtune contract follows, checked on the generated descriptors so that a future
// proto that breaks one fails here (buf lint cannot see these).
import { readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { DescEnum, DescField, DescFile, DescMessage, DescService } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { describe, expect, it } from "vitest";
import * as contracts from "./index.js";

const genDir = path.join(path.dirname(fileURLToPath(import.meta.url)), "gen");

/** Paths (relative to src/gen, without extension) of every generated file. */
function generatedModules(dir = genDir, prefix = ""): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) return generatedModules(path.join(dir, entry.name), rel);
    return entry.name.endsWith("_pb.ts") ? [rel.slice(0, -".ts".length)] : [];
  });
}

function isFileDesc(value: unknown): value is DescFile {
  return typeof value === "object" && value !== null && (value as { kind?: unknown }).kind === "file";
}

const allFiles: DescFile[] = Object.values(contracts).filter(isFileDesc);
const ragtuneFiles = allFiles.filter((f) => f.proto.package.startsWith("ragtune."));
const ragtuneTypes = ragtuneFiles.flatMap((f) => [...nestedTypes(f)]);
const messages = ragtuneTypes.filter((t): t is DescMessage => t.kind === "message");
const enums = ragtuneTypes.filter((t): t is DescEnum => t.kind === "enum");
const services = ragtuneTypes.filter((t): t is DescService => t.kind === "service");

/** The message type of a singular or repeated message field, if it is one. */
function messageOf(field: DescField): DescMessage | undefined {
  if (field.fieldKind === "message") return field.message;
  if (field.fieldKind === "list" && field.listKind === "message") return field.message;
  return undefined;
}

/** The name a type gets in TypeScript: nested types are joined with "_". */
function tsName(desc: DescMessage | DescEnum | DescService): string {
  const pkg = desc.file.proto.package;
  return desc.typeName.slice(pkg.length + 1).replaceAll(".", "_");
}

describe("generated contracts", () => {
  it("covers every area of the design, and the index re-exports every generated file", async () => {
    expect(new Set(ragtuneFiles.map((f) => f.proto.package))).toEqual(
      new Set(["common", "ingest", "dataset", "trainer", "eval", "gateway", "events"].map((a) => `ragtune.${a}.v1`)),
    );
    const modules = generatedModules();
    expect(modules.length).toBe(allFiles.length);
    for (const rel of modules) {
      const mod = (await import(/* @vite-ignore */ path.join(genDir, `${rel}.ts`))) as Record<string, unknown>;
      for (const [name, value] of Object.entries(mod)) {
        // A name exported by two files is ambiguous under `export *` and silently dropped.
        expect(contracts[name as keyof typeof contracts], `${rel} export ${name}`).toBe(value);
      }
    }
  });

  it("names every message, enum and service uniquely across all packages", () => {
    const seen = new Map<string, string>();
    for (const file of allFiles) {
      for (const desc of nestedTypes(file)) {
        if (desc.kind === "extension") continue;
        const name = tsName(desc);
        expect(seen.get(name), `${desc.typeName} collides with ${seen.get(name)}`).toBeUndefined();
        seen.set(name, desc.typeName);
      }
    }
  });

  it("gives every RPC a request and response message of its own", () => {
    expect(services.map((s) => s.name).sort()).toEqual(
      ["DatasetService", "EvalService", "GatewayService", "IngestService", "TrainerService"],
    );
    const owner = new Map<string, string>();
    for (const service of services) {
      for (const method of service.methods) {
        const rpc = `${service.typeName}.${method.name}`;
        expect(method.input.name, rpc).toBe(`${method.name}Request`);
        expect(method.output.name, rpc).toBe(`${method.name}Response`);
        for (const msg of [method.input, method.output]) {
          expect(owner.get(msg.typeName), `${msg.typeName} used by ${rpc}`).toBeUndefined();
          owner.set(msg.typeName, rpc);
        }
      }
    }
  });

  it("pages every List* RPC", () => {
    const listMethods = services.flatMap((s) => s.methods.filter((m) => m.name.startsWith("List")));
    expect(listMethods.length).toBeGreaterThanOrEqual(10);
    for (const method of listMethods) {
      const page = method.input.fields.find((f) => messageOf(f)?.typeName === "ragtune.common.v1.PageRequest");
      expect(page, `${method.input.typeName} has a PageRequest field`).toBeDefined();
      const next = method.output.fields.find((f) => messageOf(f)?.typeName === "ragtune.common.v1.PageResponse");
      expect(next, `${method.output.typeName} has a PageResponse field`).toBeDefined();
      const items = method.output.fields.filter((f) => f.fieldKind === "list");
      expect(items.length, `${method.output.typeName} has one repeated item field`).toBe(1);
    }
    const pageRequest = messages.find((m) => m.typeName === "ragtune.common.v1.PageRequest");
    expect(pageRequest?.fields.map((f) => f.name)).toEqual(["page_size", "page_token"]);
    const pageResponse = messages.find((m) => m.typeName === "ragtune.common.v1.PageResponse");
    expect(pageResponse?.fields.map((f) => f.name)).toContain("next_page_token");
  });

  it("gives every long-running resource an ID, a status and a Watch* server stream of sequenced events", () => {
    // A resource is long work when an RPC returns it and its status enum has a QUEUED value.
    const found: string[] = [];
    for (const service of services) {
      const returned = new Set(
        service.methods.flatMap((m) => m.output.fields.map(messageOf).filter((x): x is DescMessage => !!x)),
      );
      for (const resource of returned) {
        const status = resource.fields.find((f) => f.name === "status");
        if (status?.fieldKind !== "enum" || !status.enum.values.some((v) => v.name.endsWith("_QUEUED"))) continue;
        found.push(resource.name);
        expect(resource.fields.find((f) => f.name === "id")?.fieldKind, `${resource.name}.id`).toBe("scalar");
        const watch = service.methods.find((m) => m.name === `Watch${resource.name}`);
        expect(watch?.methodKind, `${service.name}.Watch${resource.name}`).toBe("server_streaming");
        if (!watch) continue;
        expect(watch.input.fields.map((f) => f.name)).toContain("from_sequence");
        const event = watch.output.fields.map(messageOf).find((x) => x !== undefined);
        expect(event?.fields.find((f) => f.name === "sequence")?.fieldKind, `${watch.output.name} event`).toBe("scalar");
        expect(event?.oneofs.length, `${event?.name} has a oneof of typed events`).toBe(1);
      }
    }
    expect(found.sort()).toEqual(
      expect.arrayContaining(["DatasetVersion", "EvalRun", "IngestRun", "Job", "PipelineRun"]),
    );
  });

  it("starts every enum with an *_UNSPECIFIED zero value and prefixes its values with its name", () => {
    expect(enums.length).toBeGreaterThan(10);
    for (const e of enums) {
      const prefix = e.name.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase();
      const zero = e.values.find((v) => v.number === 0);
      expect(zero?.name, e.typeName).toBe(`${prefix}_UNSPECIFIED`);
      for (const v of e.values) expect(v.name.startsWith(`${prefix}_`), `${e.typeName}.${v.name}`).toBe(true);
    }
  });

  it("carries an event_id and an occurred_at time in every event payload", () => {
    const payloads = messages.filter((m) => m.file.proto.package === "ragtune.events.v1" && !m.parent);
    expect(payloads.map((m) => m.name)).toEqual(
      expect.arrayContaining([
        "DocumentChunked",
        "IngestRunCompleted",
        "DatasetVersionBuilt",
        "TrainerJobEvent",
        "EvalRunCompleted",
        "AdapterPromoted",
      ]),
    );
    for (const m of payloads) {
      expect(m.fields.find((f) => f.name === "event_id")?.fieldKind, `${m.name}.event_id`).toBe("scalar");
      expect(messageOf(m.fields.find((f) => f.name === "occurred_at")!)?.typeName, `${m.name}.occurred_at`).toBe(
        "google.protobuf.Timestamp",
      );
    }
  });
});
