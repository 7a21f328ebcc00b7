import { mkdir, readdir, stat } from "node:fs/promises";
import { dirname, join, relative, resolve, sep } from "node:path";
import { create } from "@bufbuild/protobuf";
import type { ArtifactStore } from "@ragtune/bus";
import { type ArtifactRef, ArtifactRefSchema } from "@ragtune/proto";

/** Media type of a directory manifest: `{"files":[{"path","sha256","size"}]}`, each file its own artifact. */
export const DIRECTORY_MANIFEST_TYPE = "application/vnd.ragtune.directory-manifest+json";

/** What a directory manifest lists: each file's path in the directory, hash and size. */
export interface DirectoryManifest {
  files: { path: string; sha256: string; size: number }[];
}

/** Streams one file into the store (content-addressed) and returns its reference. */
export async function storeFile(store: ArtifactStore, path: string, mediaType: string): Promise<ArtifactRef> {
  const info = await store.putFile(path, { contentType: mediaType });
  return create(ArtifactRefSchema, {
    bucket: store.bucket,
    objectName: info.hash,
    sha256: info.hash,
    sizeBytes: BigInt(info.size),
    mediaType,
  });
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listFiles(full)));
    else if (entry.isFile()) out.push(full);
  }
  return out.sort();
}

/** A directory stored by {@link storeDirectory}: its manifest's reference and every object it consists of (manifest first). */
export interface StoredDirectory {
  ref: ArtifactRef;
  objects: string[];
}

/**
 * Stores every file of a directory (each streamed, content-addressed) and then a manifest naming them; returns
 * the manifest's reference and the objects stored. Identical files across checkpoints are stored once.
 */
export async function storeDirectory(store: ArtifactStore, dir: string): Promise<StoredDirectory> {
  const manifest: DirectoryManifest = { files: [] };
  for (const file of await listFiles(dir)) {
    const info = await store.putFile(file, { contentType: "application/octet-stream" });
    manifest.files.push({ path: relative(dir, file).split(sep).join("/"), sha256: info.hash, size: info.size });
  }
  const bytes = new TextEncoder().encode(JSON.stringify(manifest));
  const info = await store.put([bytes], { contentType: DIRECTORY_MANIFEST_TYPE });
  const ref = create(ArtifactRefSchema, {
    bucket: store.bucket,
    objectName: info.hash,
    sha256: info.hash,
    sizeBytes: BigInt(info.size),
    mediaType: DIRECTORY_MANIFEST_TYPE,
  });
  return { ref, objects: [info.hash, ...manifest.files.map((f) => f.sha256)] };
}

/** The manifest of a directory stored by {@link storeDirectory}, or null when it is not in the store. */
export async function readManifest(store: ArtifactStore, hash: string): Promise<DirectoryManifest | null> {
  const stream = await store.get(hash);
  if (stream === null) return null;
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString("utf8")) as DirectoryManifest;
}

/**
 * Recreates a directory stored by {@link storeDirectory} under `dest` (each file streamed and verified); `signal` stops
 * it (the file being written is removed).
 */
export async function restoreDirectory(store: ArtifactStore, ref: ArtifactRef, dest: string, signal?: AbortSignal): Promise<void> {
  const manifest = await readManifest(store, ref.sha256);
  if (manifest === null) throw new Error(`checkpoint manifest ${ref.bucket}/${ref.sha256} is missing from the object store`);
  const root = resolve(dest);
  for (const file of manifest.files) {
    const target = resolve(root, file.path);
    if (!target.startsWith(root + sep)) throw new Error(`manifest ${ref.sha256} names a path outside its directory: ${file.path}`);
    await mkdir(dirname(target), { recursive: true });
    await restoreFile(store, file.sha256, file.size, target, signal);
  }
}

/** One stored artifact into `target` (a folder that exists), checked against the size it was stored with. */
export async function restoreFile(store: ArtifactStore, sha256: string, size: number | bigint, target: string, signal?: AbortSignal): Promise<void> {
  await store.getToFile(sha256, target, signal);
  const got = (await stat(target)).size;
  if (BigInt(got) !== BigInt(size)) throw new Error(`restored ${target} has ${got} bytes, expected ${size}`);
}
