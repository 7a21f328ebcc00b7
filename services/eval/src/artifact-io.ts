import { type ArtifactStore, readArtifactContent, storeArtifactContent } from "@ragtune/bus";
import type { ArtifactRef } from "@ragtune/proto";
import { failedPrecondition } from "@ragtune/rpc";

/** Stores bytes (or UTF-8 text) in the run's artifact bucket; returns its reference (named by its SHA-256). */
export function storeArtifact(artifacts: ArtifactStore, content: Uint8Array | string, mediaType: string): Promise<ArtifactRef> {
  return storeArtifactContent(artifacts, content, mediaType);
}

/** The whole content of a stored artifact; FAILED_PRECONDITION naming `what` when it is gone. */
export async function readArtifact(artifacts: ArtifactStore, hash: string, what: string): Promise<Buffer> {
  const content = await readArtifactContent(artifacts, hash);
  if (content === null) throw failedPrecondition(`the ${what} is missing from the object store (${artifacts.bucket}/${hash})`);
  return content;
}
