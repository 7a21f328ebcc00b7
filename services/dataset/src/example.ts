/**
 * A dataset example as the dataset service's domain modules see it (generators, quality gate, splits, exports):
 * a plain object, mapped to the proto's `ragtune.dataset.v1.Example` at the service boundary.
 *
 * Field mapping to the proto `Example`:
 *   id                         → id
 *   question, answer           → question, answer
 *   answerable                 → kind (EXAMPLE_KIND_ANSWERABLE / EXAMPLE_KIND_UNANSWERABLE)
 *   chunkId                    → context_chunk_ids[0] (the context is one chunk)
 *   distractorSource ?? chunk  → source_chunk_id / source_document_id (the chunk the question was written from)
 *   context, headingPath, kind → context, heading_path, question_type
 * `generator` has no proto field yet.
 */

/** The kinds of question a generator writes; `unanswerable` is a question the context does not answer. */
export const QUESTION_KINDS = ["factual", "conceptual", "comparison", "unanswerable"] as const;
export type QuestionKind = (typeof QUESTION_KINDS)[number];

/** Who wrote the question and answer: a language model, or the extractive generator (answer copied from the context). */
export const EXAMPLE_GENERATORS = ["llm", "extractive"] as const;
export type ExampleGenerator = (typeof EXAMPLE_GENERATORS)[number];

/**
 * Where the question of an unanswerable example comes from: another chunk, whose answer the example's context does not
 * hold. The example's own chunkId/documentId/headingPath/context always describe the context the model is shown.
 */
export interface DistractorSource {
  chunkId: string;
  documentId: string;
}

/** One chunk of a served (retrieved) context, in prompt order. */
export interface ContextChunk {
  chunkId: string;
  documentId: string;
  headingPath: readonly string[];
  text: string;
}

export interface DatasetExample {
  /** Content-addressed ID, unique within a dataset version. */
  id: string;
  /** The chunk whose text is the context (for every example, answerable or not). */
  chunkId: string;
  /** The document of that chunk. */
  documentId: string;
  /** Headings of the context chunk from the outermost to the innermost, e.g. ["Guide", "Section", "Subsection"]. */
  headingPath: readonly string[];
  /** The context text as it enters the prompt (the chunk text, without its heading path). */
  context: string;
  question: string;
  /** The reference answer; for unanswerable examples the refusal text. */
  answer: string;
  kind: QuestionKind;
  /** Whether the context holds the answer. */
  answerable: boolean;
  generator: ExampleGenerator;
  /** Set for unanswerable examples whose question was taken from another chunk. */
  distractorSource?: DistractorSource;
  /**
   * Set in versions built with retrieved contexts (`context_chunks` > 1, served-contexts.ts): the chunks the prompt
   * shows, in order, instead of `context` under `headingPath` (which still describe the chunk the question was written
   * from, or the negative's distractor).
   */
  contextChunks?: readonly ContextChunk[];
}

/**
 * The text near-duplicate detection compares (quality gate and splits): the question with its answer. The context is
 * left out on purpose: an unanswerable example reuses another chunk's question with a refusal as its answer, which makes
 * it a different training signal from the answerable original, while the same question and answer over two copies of
 * one paragraph (boilerplate repeated across pages) is the same signal.
 */
export function fingerprintText(example: Pick<DatasetExample, "question" | "answer">): string {
  return `${example.question}\n${example.answer}`;
}
