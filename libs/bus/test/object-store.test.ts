import { createHash } from "node:crypto";
import { createReadStream, watch } from "node:fs";
import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Objm } from "@nats-io/obj";
import { removeTempDir, tempDir } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Bus } from "../src/index.js";
import { startHarness, type Harness } from "./harness.js";

let h: Harness;
let bus: Bus;
let dir: string;

beforeAll(async () => {
  h = await startHarness();
  bus = await h.connect("obj-test");
  dir = await tempDir("bus-obj-test");
});
afterAll(async () => {
  await h?.close();
  if (dir) await removeTempDir(dir);
});

const MiB = 1024 * 1024;

/** Deterministic pseudo-random bytes (xorshift32), produced chunk by chunk: never held whole. */
async function* generate(totalBytes: number, chunkBytes: number, onChunk?: (producedBefore: number) => Promise<void>) {
  let state = 0x9e3779b9;
  for (let produced = 0; produced < totalBytes; produced += chunkBytes) {
    if (onChunk) await onChunk(produced);
    const n = Math.min(chunkBytes, totalBytes - produced);
    const words = new Uint32Array(Math.ceil(n / 4));
    for (let i = 0; i < words.length; i++) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      words[i] = state >>> 0;
    }
    yield new Uint8Array(words.buffer, 0, n);
  }
}

async function sha256Of(source: AsyncIterable<Uint8Array>): Promise<{ hash: string; size: number }> {
  const sha = createHash("sha256");
  let size = 0;
  for await (const chunk of source) {
    sha.update(chunk);
    size += chunk.length;
  }
  return { hash: sha.digest("hex"), size };
}

async function objectNames(bucket: string): Promise<string[]> {
  const os = await new Objm(bus.js).open(bucket);
  return (await os.list()).map((i) => i.name).sort();
}

describe("artifact store", () => {
  it("streams a 50 MB artifact in and out, named by its SHA-256, without buffering it whole", async () => {
    const total = 50 * MiB;
    const chunk = 64 * 1024;
    const expected = await sha256Of(generate(total, chunk));
    const store = await bus.artifacts("big");

    // Upload: each time the generator is asked for more, the server must already hold (almost) all
    // bytes produced so far. A client that collected the source before sending would fail this.
    let checks = 0;
    let maxGap = 0;
    const info = await store.put(
      generate(total, chunk, async (producedBefore) => {
        if (producedBefore === 0 || producedBefore % (4 * MiB) !== 0) return;
        const stored = (await bus.jsm.streams.info("OBJ_big")).state.bytes;
        maxGap = Math.max(maxGap, producedBefore - stored);
        checks++;
      }),
      { contentType: "application/octet-stream" },
    );
    expect(checks).toBe(12);
    expect(maxGap).toBeLessThan(1 * MiB);
    expect(info).toMatchObject({ hash: expected.hash, size: total, contentType: "application/octet-stream" });
    expect(await store.has(expected.hash)).toBe(true);
    // the temporary upload name is gone: only the hash names an object
    expect(await objectNames("big")).toEqual([expected.hash]);

    // Download: the reader pulls; the server may only run a few chunks ahead of it.
    const readable = await store.get(expected.hash);
    expect(readable).not.toBeNull();
    const sha = createHash("sha256");
    let size = 0;
    let chunksRead = 0;
    let maxAhead = 0;
    for await (const piece of readable!) {
      sha.update(piece as Buffer);
      size += (piece as Buffer).length;
      chunksRead++;
      if (chunksRead % 40 === 0) {
        const consumers = await bus.jsm.consumers.list("OBJ_big").next();
        const delivered = Math.max(0, ...consumers.map((c) => c.delivered.consumer_seq));
        // the reading consumer is the one we see: it has delivered at least what we read
        expect(delivered).toBeGreaterThanOrEqual(chunksRead);
        maxAhead = Math.max(maxAhead, delivered - chunksRead);
      }
    }
    expect(size).toBe(total);
    expect(sha.digest("hex")).toBe(expected.hash);
    expect(chunksRead).toBe(info.chunks);
    expect(maxAhead).toBeLessThanOrEqual(8); // ≤ 1 MiB ahead of a 50 MiB artifact

    // to a file, via a .partial file renamed at the end
    const out = join(dir, "big.bin");
    await store.getToFile(expected.hash, out);
    expect((await stat(out)).size).toBe(total);
    expect((await sha256Of(createReadStream(out))).hash).toBe(expected.hash);
    await rm(out);
  });

  it("getToFile stops when its signal aborts: the partial file is gone when it rejects, and a retry writes the file whole", async () => {
    const store = await bus.artifacts("abortable");
    const stored = await store.put(generate(8 * MiB, 256 * 1024));
    const target = join(dir, "abort-test");
    await mkdir(target);
    const out = join(target, "restored.bin");
    // Aborted before it starts: nothing written.
    await expect(store.getToFile(stored.hash, out, AbortSignal.abort(new Error("stopped early")))).rejects.toThrow("stopped early");
    expect(await readdir(target)).toEqual([]);
    // Aborted while it writes: the abort comes when the partial file appears (an inotify event, not a sleep).
    const controller = new AbortController();
    const watcher = watch(target, (_event, name) => {
      if (name === "restored.bin.partial") controller.abort(new Error("reconnected"));
    });
    try {
      await expect(store.getToFile(stored.hash, out, controller.signal)).rejects.toThrow("reconnected");
    } finally {
      watcher.close();
    }
    expect(await readdir(target)).toEqual([]);
    // The retry that follows writes the same partial name and renames it whole.
    await store.getToFile(stored.hash, out);
    expect(await readdir(target)).toEqual(["restored.bin"]);
    expect((await sha256Of(createReadStream(out))).hash).toBe(stored.hash);
  });

  it("dedupes identical content, reads files, deletes, and reports what is missing", async () => {
    const store = await bus.artifacts("small");
    const file = join(dir, "note.txt");
    await writeFile(file, "hello artifact\n");
    const hash = createHash("sha256").update("hello artifact\n").digest("hex");

    const a = await store.putFile(file, { contentType: "text/plain" });
    const b = await store.put([new TextEncoder().encode("hello "), new TextEncoder().encode("artifact\n")]);
    expect(a.hash).toBe(hash);
    expect(b.hash).toBe(hash);
    expect(await objectNames("small")).toEqual([hash]);
    expect(await store.info(hash)).toMatchObject({ hash, size: 15, contentType: "text/plain" });

    const out = join(dir, "note.out");
    await store.getToFile(hash, out);
    expect(await readFile(out, "utf8")).toBe("hello artifact\n");

    const empty = await store.put([]);
    expect(empty).toMatchObject({ hash: createHash("sha256").digest("hex"), size: 0 });
    expect(await sha256Of((await store.get(empty.hash))!)).toEqual({ hash: empty.hash, size: 0 });

    expect(await store.delete(hash)).toBe(true);
    expect(await store.has(hash)).toBe(false);
    expect(await store.get(hash)).toBeNull();
    expect(await store.delete(hash)).toBe(false);
    await expect(store.getToFile(hash, out)).rejects.toThrow(/not found/);
    await expect(store.has("not-a-hash")).rejects.toThrow(/64 lowercase hex/);
  });

  it("putBytes stores content under the hash the caller gives, once, and refuses a hash the content does not have", async () => {
    const store = await bus.artifacts("known-hash");
    const content = new TextEncoder().encode("[{\"id\":\"c1\"}]");
    const hash = createHash("sha256").update(content).digest("hex");
    const first = await store.putBytes(content, hash, { contentType: "application/json" });
    expect(first).toMatchObject({ hash, size: content.byteLength, contentType: "application/json" });
    expect(await sha256Of((await store.get(hash))!)).toEqual({ hash, size: content.byteLength });
    const again = await store.putBytes(content, hash);
    expect(again.mtime).toBe(first.mtime); // not written again
    expect(await store.put([content])).toMatchObject({ hash });
    expect(await objectNames("known-hash")).toEqual([hash]);
    const other = createHash("sha256").update("something else").digest("hex");
    await expect(store.putBytes(content, other)).rejects.toThrow(/does not hash to that name/);
    expect(await store.has(other)).toBe(false);
    await expect(store.putBytes(content, "not-a-hash")).rejects.toThrow(/64 lowercase hex/);
  });

  it("putBytes writes one-chunk content as the object store does (its own client reads it, digest and all), keeps what is stored, and leaves nothing behind", async () => {
    const store = await bus.artifacts("one-chunk");
    const os = await new Objm(bus.js).open("one-chunk");
    const messages = async () => (await bus.jsm.streams.info("OBJ_one-chunk")).state.messages;
    const content = new Uint8Array(100_000).map((_, i) => (i * 13) % 256);
    const hash = createHash("sha256").update(content).digest("hex");
    const stored = await store.putBytes(content, hash, { contentType: "application/json" });
    expect(stored).toMatchObject({ hash, size: 100_000, chunks: 1, contentType: "application/json" });
    const info = await os.info(hash);
    expect(info).toMatchObject({ name: hash, size: 100_000, chunks: 1, deleted: false, metadata: { contentType: "application/json" } });
    expect(Buffer.from(info!.digest.replace(/^SHA-256=/, ""), "base64url").toString("hex")).toBe(hash);
    expect(Buffer.from((await os.getBlob(hash))!).equals(Buffer.from(content))).toBe(true);
    expect(await store.info(hash)).toEqual(stored);
    expect(await messages()).toBe(2); // one chunk, one metadata record
    // Stored already: the chunk sent along with the look for it is removed again, and the object is left as it was.
    expect(await store.putBytes(content, hash)).toEqual(stored);
    expect(await messages()).toBe(2);
    // Past one chunk: the object store's own upload, in chunks.
    const large = new Uint8Array(300_000).map((_, i) => (i * 7) % 256);
    const largeHash = createHash("sha256").update(large).digest("hex");
    expect(await store.putBytes(large, largeHash)).toMatchObject({ hash: largeHash, size: 300_000, chunks: 3 });
    expect(await sha256Of((await store.get(largeHash))!)).toEqual({ hash: largeHash, size: 300_000 });
    expect((await objectNames("one-chunk")).sort()).toEqual([hash, largeHash].sort());
  });

  it("a read fails clearly, instead of waiting forever, when the object is deleted while it is being read", async () => {
    const store = await bus.artifacts("deleted-mid-read", { readAhead: 1 });
    const bytes = new Uint8Array(4 * 1024 * 1024).map((_, i) => (i * 7) % 251);
    const { hash } = await store.put([bytes]);
    const reading = (await store.get(hash))![Symbol.asyncIterator]();
    expect((await reading.next()).done).toBe(false); // the first chunk has arrived
    expect(await store.delete(hash)).toBe(true);
    await expect((async () => {
      for (;;) if ((await reading.next()).done) return;
    })()).rejects.toThrow(/was deleted while it was being read/);
  });

  it("a failing source stores nothing", async () => {
    const store = await bus.artifacts("failing");
    async function* broken() {
      yield new Uint8Array(300 * 1024);
      throw new Error("disk read failed");
    }
    await expect(store.put(broken())).rejects.toThrow(/disk read failed/);
    expect(await objectNames("failing")).toEqual([]);
    expect((await bus.jsm.streams.info("OBJ_failing")).state.bytes).toBe(0);
  });
});
