import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Creates a fresh directory under the OS temp dir, named `<prefix>-XXXXXX`, and returns its path. */
export async function tempDir(prefix: string): Promise<string> {
  if (!/^[\w.-]+$/.test(prefix)) {
    throw new Error(`tempDir: prefix must be letters, digits, '.', '_' or '-', got ${JSON.stringify(prefix)}`);
  }
  return mkdtemp(join(tmpdir(), `${prefix}-`));
}

/** Removes a directory made by {@link tempDir} (recursively; a missing directory is fine). */
export async function removeTempDir(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true, maxRetries: 3 });
}
