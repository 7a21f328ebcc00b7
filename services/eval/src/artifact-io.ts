import { create } from "@bufbuild/protobuf";
import type { ArtifactStore } from "@ragtune/bus";
import { type ArtifactRef, ArtifactRefSchema } from "@ragtune/proto";
import { failedPrecondition } from "@ragtune/rpc";

/** Stores bytes (or UTF-8 text) in the run's artifact bucket; returns its reference (named by its SHA-256). */
export async function storeArtifact(artifacts: ArtifactStore, content: Uint8Array | string, mediaType: string): Promise<ArtifactRef> {
  const info = await artifacts.put([typeof content === "string" ? Buffer.from(content, "utf8") : Buffer.from(content)], { contentType: mediaType });
  return create(ArtifactRefSchema, { bucket: artifacts.bucket, objectName: info.hash, sha256: info.hash, sizeBytes: BigInt(info.size), mediaType });
}

/** The whole content of a stored artifact; FAILED_PRECONDITION naming `what` when it is gone. */
export async function readArtifact(artifacts: ArtifactStore, hash: string, what: string): Promise<Buffer> {
  const stream = await artifacts.get(hash);
  if (stream === null) throw failedPrecondition(`the ${what} is missing from the object store (${artifacts.bucket}/${hash})`);
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  return Buffer.concat(parts);
}
