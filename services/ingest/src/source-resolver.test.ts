import { mkdir, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { DocumentErrorReason, ServerPathSchema } from "@ragtune/proto";
import { tempDir } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isInside, resolveServerPath } from "./source-resolver.js";

describe("resolveServerPath", () => {
  let base: string;
  let root: string;
  let outside: string;

  beforeAll(async () => {
    base = await tempDir("ingest-resolver");
    root = join(base, "root");
    outside = join(base, "outside");
    await mkdir(join(root, "guide", "deep"), { recursive: true });
    await mkdir(outside, { recursive: true });
    await writeFile(join(root, "guide", "b.md"), "# B");
    await writeFile(join(root, "guide", "a.html"), "<h1>A</h1>");
    await writeFile(join(root, "guide", "deep", "c.txt"), "c");
    await writeFile(join(root, "guide", "image.png"), "x");
    await writeFile(join(outside, "secret.md"), "# secret");
    await symlink(join(outside, "secret.md"), join(root, "guide", "escape.md"));
    await symlink(outside, join(root, "linkdir"));
    await symlink(join(root, "guide", "b.md"), join(root, "guide", "alias.md"));
  });
  afterAll(async () => {
    await rm(base, { recursive: true, force: true });
  });

  const req = (path: string, extra: { recursive?: boolean; extensions?: string[] } = {}) => create(ServerPathSchema, { path, ...extra });

  it("lists supported files recursively in path order, names relative to the root", async () => {
    const files = await resolveServerPath(root, req("guide"));
    expect(files.map((f) => [f.sourceName, f.ok])).toEqual([
      ["guide/a.html", true],
      ["guide/alias.md", true],
      ["guide/b.md", true],
      ["guide/deep/c.txt", true],
      ["guide/escape.md", false],
    ]);
    const escape = files.find((f) => f.sourceName === "guide/escape.md")!;
    expect(escape.ok === false && escape.reason).toBe(DocumentErrorReason.PATH_OUTSIDE_ROOT);
  });

  it("honours recursive=false and extension filters", async () => {
    const flat = await resolveServerPath(root, req("guide", { recursive: false, extensions: ["md"] }));
    expect(flat.map((f) => f.sourceName)).toEqual(["guide/alias.md", "guide/b.md", "guide/escape.md"]);
  });

  it("refuses paths outside the root, lexically or through a symlink, and reports missing ones", async () => {
    for (const path of ["../outside/secret.md", join(outside, "secret.md"), "linkdir/secret.md", "linkdir", "guide/../../outside"]) {
      const [only, ...rest] = await resolveServerPath(root, req(path));
      expect(rest, path).toEqual([]);
      expect(only!.ok, path).toBe(false);
      expect(only!.ok === false && only!.reason, path).toBe(DocumentErrorReason.PATH_OUTSIDE_ROOT);
    }
    const [missing] = await resolveServerPath(root, req("guide/nope.md"));
    expect(missing!.ok === false && missing!.reason).toBe(DocumentErrorReason.PATH_NOT_FOUND);
  });

  it("accepts an absolute path inside the root", async () => {
    const [file] = await resolveServerPath(root, req(join(root, "guide", "b.md")));
    expect(file).toEqual({ ok: true, sourceName: "guide/b.md", absolutePath: join(root, "guide", "b.md") });
  });

  it("refuses every server path when no root is configured", async () => {
    const [only] = await resolveServerPath(undefined, req("guide"));
    expect(only!.ok === false && only!.message).toContain("INGEST_ALLOWED_ROOT");
  });

  it("isInside does not confuse sibling prefixes", () => {
    expect(isInside("/a/root", "/a/root")).toBe(true);
    expect(isInside("/a/root", "/a/root/x")).toBe(true);
    expect(isInside("/a/root", "/a/rootless/x")).toBe(false);
    expect(isInside("/a/root", "/a")).toBe(false);
  });
});
