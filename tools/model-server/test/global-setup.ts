import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";
import { makeTinyModels, type TinyModels } from "../src/tiny-models.js";

declare module "vitest" {
  export interface ProvidedContext {
    tinyModels: TinyModels;
  }
}

/** Makes the tiny model and a trained adapter once for every test file; removes them afterwards. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const root = await mkdtemp(join(tmpdir(), "model-server-test-"));
  project.provide("tinyModels", await makeTinyModels(root));
  return () => rm(root, { recursive: true, force: true });
}
