/**
 * JSON-lines exports of dataset examples, one row per example, streamed.
 *
 * Formats:
 *   mistral-instruct   `{"id","prompt","completion"}`: what the trainer's worker trains on (ragtune_worker/data.py).
 *                      prompt `[INST] {user turn} [/INST]`, completion `{answer}</s>`. The worker tokenizes the prompt
 *                      with the tokenizer's BOS (`<s>`) and the completion without special tokens; the completion's
 *                      `</s>` is the EOS token (the worker adds none when the completion already ends with it), a
 *                      learned target. prompt + " " + completion is the canonical Mistral row
 *                      `[INST] … [/INST] {answer}</s>`, and the worker's tokens for the pair equal the tokens of that
 *                      row (the completion's leading "▁" comes from the tokenizer's prepended space).
 *   mistral-inference  `{"id","prompt","reference","answerable"}`: the same prompt without the answer, for generation
 *                      (a server adds the BOS); the reference answer beside it for scoring.
 *   chat               `{"id","messages":[{"role","content"}…]}`: OpenAI-style chat rows (system message when a system
 *                      prompt is given, user turn, assistant answer) for trainers that apply a chat template themselves.
 *   prompt-completion  `{"id","prompt","completion"}` without any template: the user turn and the bare answer.
 *
 * The user turn is `{heading path}\n\n{context}\n\nQuestion: {question}`, the heading path joined with " > "
 * (left out when the chunk has no heading); a system prompt, when given, goes before it followed by a blank line (the
 * way Mistral's own chat template places a system message, as Mistral instruct has no system role). Question, answer,
 * context and headings are trimmed.
 */
import type { DatasetExample } from "./example.js";

export const EXPORT_FORMATS = ["mistral-instruct", "mistral-inference", "chat", "prompt-completion"] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

export interface PromptOptions {
  /** Instructions placed before the context (Mistral) or as the system message (chat). Empty or unset: none. */
  systemPrompt?: string;
}

/** The Mistral instruct template's markup; text holding any of it would change the row's structure when tokenized. */
export const MISTRAL_TEMPLATE = { bos: "<s>", eos: "</s>", open: "[INST]", close: "[/INST]" } as const;

/**
 * Strings that must not occur in an example's text for the Mistral formats: the tokenizer turns `<s>`, `</s>` and
 * `<unk>` in text into special tokens (an EOS in the middle of an answer would teach the model to stop there), and
 * `[INST]`/`[/INST]` would fake turn boundaries.
 */
export const TEMPLATE_MARKUP: readonly string[] = ["<s>", "</s>", "<unk>", "[INST]", "[/INST]"];

type ExampleText = Pick<DatasetExample, "headingPath" | "context" | "question" | "contextChunks">;

/** One chunk under its heading path: "Guide > Section > Subsection\n\n{text}", or the text alone. */
function chunkBlock(headingPath: readonly string[], text: string): string {
  const headings = headingPath.map((h) => h.trim()).filter((h) => h.length > 0);
  const context = text.trim();
  return headings.length === 0 ? context : `${headings.join(" > ")}\n\n${context}`;
}

/**
 * The context as it enters the prompt: one chunk as "Guide > Section > Subsection\n\n{context}" (or the context
 * alone); several (a retrieved context, what the gateway sends) as numbered blocks "[1] Guide > Section\n\n{text}",
 * "[2] …", separated by blank lines.
 */
export function contextBlock(example: Pick<DatasetExample, "headingPath" | "context" | "contextChunks">): string {
  const chunks = example.contextChunks;
  if (chunks === undefined || chunks.length === 0) return chunkBlock(example.headingPath, example.context);
  return chunks.map((c, i) => `[${i + 1}] ${chunkBlock(c.headingPath, c.text)}`).join("\n\n");
}

/** The user turn without the system prompt: "{context block}\n\nQuestion: {question}". */
export function questionTurn(example: ExampleText): string {
  return `${contextBlock(example)}\n\nQuestion: ${example.question.trim()}`;
}

/** The user turn with the system prompt (when given) in front. */
export function userTurn(example: ExampleText, options: PromptOptions = {}): string {
  const system = options.systemPrompt?.trim() ?? "";
  const turn = questionTurn(example);
  return system.length === 0 ? turn : `${system}\n\n${turn}`;
}

/** `[INST] {user turn} [/INST]`: the prompt of training and inference (the tokenizer adds the BOS). */
export function mistralPrompt(example: ExampleText, options: PromptOptions = {}): string {
  return `${MISTRAL_TEMPLATE.open} ${userTurn(example, options)} ${MISTRAL_TEMPLATE.close}`;
}

/** `{answer}</s>`: the completion the model learns, EOS included. */
export function mistralCompletion(example: Pick<DatasetExample, "answer">): string {
  return `${example.answer.trim()}${MISTRAL_TEMPLATE.eos}`;
}

/**
 * Tokens of an example's mistral-instruct row exactly as the worker encodes it: the BOS, the prompt, the completion
 * with its EOS (counted through `</s>`, which the counter treats as one added token). `counter` counts text without
 * special tokens (libs/text TokenCounter for the target model).
 */
export function mistralRowTokens(example: ExampleText & Pick<DatasetExample, "answer">, counter: { count(text: string): number }, options: PromptOptions = {}): number {
  return 1 + counter.count(mistralPrompt(example, options)) + counter.count(mistralCompletion(example));
}

/** The first template markup string found in the example's text or the system prompt, if any. */
export function findTemplateMarkup(example: Pick<DatasetExample, "headingPath" | "context" | "question" | "answer" | "contextChunks">, options: PromptOptions = {}): string | undefined {
  const texts = [example.context, example.question, example.answer, options.systemPrompt ?? "", ...example.headingPath];
  for (const c of example.contextChunks ?? []) texts.push(c.text, ...c.headingPath);
  for (const markup of TEMPLATE_MARKUP) if (texts.some((t) => t.includes(markup))) return markup;
  return undefined;
}

/** One JSON line (with its "\n") of an example in a format. */
export function exportRow(example: DatasetExample, format: ExportFormat, options: PromptOptions = {}): string {
  switch (format) {
    case "mistral-instruct":
    case "mistral-inference": {
      const markup = findTemplateMarkup(example, options);
      if (markup !== undefined) {
        throw new Error(`example ${example.id}: its text holds the template markup ${JSON.stringify(markup)}; the quality gate drops such examples (template_markup)`);
      }
      const prompt = mistralPrompt(example, options);
      const row =
        format === "mistral-instruct"
          ? { id: example.id, prompt, completion: mistralCompletion(example) }
          : { id: example.id, prompt, reference: example.answer.trim(), answerable: example.answerable };
      return `${JSON.stringify(row)}\n`;
    }
    case "chat": {
      const system = options.systemPrompt?.trim() ?? "";
      const messages = [
        ...(system.length === 0 ? [] : [{ role: "system", content: system }]),
        { role: "user", content: questionTurn(example) },
        { role: "assistant", content: example.answer.trim() },
      ];
      return `${JSON.stringify({ id: example.id, messages })}\n`;
    }
    case "prompt-completion":
      return `${JSON.stringify({ id: example.id, prompt: userTurn(example, options), completion: example.answer.trim() })}\n`;
    default:
      throw new Error(`unknown export format ${JSON.stringify(format)}: use one of ${EXPORT_FORMATS.join(", ")}`);
  }
}

/** The rows of an export as they are produced, one JSON line (ending in "\n") per example, in input order. */
export async function* exportJsonl(
  examples: Iterable<DatasetExample> | AsyncIterable<DatasetExample>,
  format: ExportFormat,
  options: PromptOptions = {},
): AsyncGenerator<string, void, undefined> {
  for await (const example of examples) yield exportRow(example, format, options);
}
