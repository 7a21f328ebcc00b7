import { availableParallelism } from "node:os";
import { isAbsolute, resolve } from "node:path";
import { baseServiceSchema, envDuration, envInt, loadConfig } from "@ragtune/config";
import { z } from "zod";

/** Tokenizer names accepted by INGEST_DEFAULT_TOKENIZER. */
export const TOKENIZER_CHOICES = ["mistral", "llama3", "qwen3"] as const;

/** Smallest and largest chunk budget a request (or the default) may ask for, in tokens. */
export const MIN_CHUNK_SIZE = 32;
export const MAX_CHUNK_SIZE = 8192;

export const ingestConfigSchema = baseServiceSchema
  .extend({
    /**
     * Directory under which server-side paths may be ingested (absolute; relative paths resolve
     * against the working directory). Unset: server-side paths are refused.
     */
    INGEST_ALLOWED_ROOT: z
      .string()
      .transform((p) => (isAbsolute(p) ? p : resolve(p)))
      .optional(),
    /** Documents larger than this many bytes are rejected with TOO_LARGE. */
    INGEST_MAX_DOCUMENT_BYTES: envInt({ min: 1, max: 256 * 1024 * 1024, default: 10 * 1024 * 1024 }),
    /** Tokenizer for requests that do not name one. */
    INGEST_DEFAULT_TOKENIZER: z.enum(TOKENIZER_CHOICES).default("mistral"),
    /** Chunk budget in tokens for requests that do not set one. */
    INGEST_DEFAULT_CHUNK_SIZE: envInt({ min: MIN_CHUNK_SIZE, max: MAX_CHUNK_SIZE, default: 512 }),
    /** Chunk overlap in tokens for requests that do not set one. */
    INGEST_DEFAULT_CHUNK_OVERLAP: envInt({ min: 0, max: MAX_CHUNK_SIZE, default: 0 }),
    /** Worker threads that parse and chunk documents (default: the cores this process may use). */
    INGEST_WORKERS: envInt({ min: 1, max: 256, default: availableParallelism() }),
    /**
     * Longest a document's parsing and chunking may take; then it fails with reason TIMEOUT and its worker thread is
     * replaced. Keep it below INGEST_RUN_LEASE.
     */
    INGEST_DOCUMENT_TIMEOUT: envDuration("2m"),
    /** Most documents one IngestDocuments batch may hold after directories are expanded. */
    INGEST_MAX_BATCH_DOCUMENTS: envInt({ min: 1, max: 100_000, default: 10_000 }),
    /**
     * How long an instance's claim on a run lasts without progress; after that another instance
     * (or this one after a crash and restart) takes the run over. Longer than the slowest document.
     */
    INGEST_RUN_LEASE: envDuration("5m"),
    /** How often to look for unfinished runs nobody holds (runs of a crashed instance). 0 disables. */
    INGEST_RUN_SCAN_INTERVAL: envDuration("30s"),
    /** Prefix of the service's KV buckets and object stores (tests isolate with it). */
    INGEST_BUCKET_PREFIX: z
      .string()
      .regex(/^[A-Za-z0-9_-]+$/, "use only letters, digits, '_' and '-'")
      .default("ingest"),
  })
  .refine((c) => c.INGEST_DOCUMENT_TIMEOUT > 0, { message: "must be above 0", path: ["INGEST_DOCUMENT_TIMEOUT"] })
  .refine((c) => c.INGEST_DEFAULT_CHUNK_OVERLAP * 2 < c.INGEST_DEFAULT_CHUNK_SIZE, {
    message: "must be below half of INGEST_DEFAULT_CHUNK_SIZE",
    path: ["INGEST_DEFAULT_CHUNK_OVERLAP"],
  });

export type IngestConfig = z.infer<typeof ingestConfigSchema>;

/** Reads the ingest service's configuration from the environment; fails naming each bad variable. */
export function loadIngestConfig(env: Record<string, string | undefined> = process.env): IngestConfig {
  return loadConfig("ingest", ingestConfigSchema, env);
}
