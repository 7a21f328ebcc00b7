/**
 * The items of an eval set and how each is put to a model. Items come from a dataset version's test split (read
 * through the dataset service's ListExamples) or from an uploaded JSON-lines file. Prompts are rendered by the
 * dataset's own export code (services/dataset exports.ts): the completion prompt is exactly the training template's
 * prompt, the chat message exactly its user turn.
 */
import { create } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { contextBlock, mistralPrompt, questionTurn } from "@ragtune/dataset-service/exports";
import { type DatasetService, DatasetSplit, DatasetVersionStatus, ExampleKind, PageRequestSchema } from "@ragtune/proto";
import { seededDraws } from "./seeded-draws.js";
import { z } from "zod";

export interface EvalItem {
  id: string;
  question: string;
  reference: string;
  answerable: boolean;
  /** What the answer's grounding is checked against: the heading path and context as the prompt shows them. */
  context: string;
  questionType: string;
  sourceDocument: string;
  /** The completion prompt in the training template. */
  prompt: string;
  /** The user turn for the chat format. */
  userTurn: string;
}

/** An eval file or dataset version that cannot be evaluated, with a message a user can act on. */
export class EvalSourceError extends Error {
  constructor(
    readonly reason: "NOT_FOUND" | "NOT_READY" | "INVALID" | "EMPTY",
    message: string,
    readonly field = "",
  ) {
    super(message);
    this.name = "EvalSourceError";
  }
}

/** Largest uploaded eval file accepted. */
export const MAX_EVAL_FILE_BYTES = 32 * 1024 * 1024;

const fileRow = z
  .object({
    id: z.string().min(1).max(200),
    question: z.string().trim().min(1, "question is empty"),
    reference: z.string().optional(),
    answer: z.string().optional(),
    answerable: z.boolean(),
    context: z.string().trim().min(1, "context is empty"),
    heading_path: z.array(z.string()).optional(),
    prompt: z.string().min(1).optional(),
    question_type: z.string().optional(),
    source_document: z.string().optional(),
  })
  .refine((r) => (r.reference ?? r.answer) !== undefined, { message: "reference (or answer) is required" });

function render(e: { headingPath: readonly string[]; context: string; question: string }): Pick<EvalItem, "context" | "prompt" | "userTurn"> {
  return { context: contextBlock(e), prompt: mistralPrompt(e), userTurn: questionTurn(e) };
}

/**
 * Items of an uploaded file: one JSON object a line, `{"id", "question", "reference", "answerable", "context",
 * "heading_path"?, "prompt"?, "question_type"?, "source_document"?}` (`answer` is accepted for `reference`; `prompt`
 * overrides the rendered completion prompt). Throws EvalSourceError naming the first bad line.
 */
export function parseEvalFile(bytes: Uint8Array): EvalItem[] {
  if (bytes.byteLength === 0) throw new EvalSourceError("EMPTY", "the eval file is empty; upload JSON lines with id, question, reference, answerable, context", "eval_file.jsonl");
  if (bytes.byteLength > MAX_EVAL_FILE_BYTES) {
    throw new EvalSourceError("INVALID", `the eval file is ${bytes.byteLength} bytes; at most ${MAX_EVAL_FILE_BYTES} are accepted`, "eval_file.jsonl");
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new EvalSourceError("INVALID", "the eval file is not UTF-8 text", "eval_file.jsonl");
  }
  const items: EvalItem[] = [];
  const ids = new Set<string>();
  const lines = text.split("\n");
  for (const [index, raw] of lines.entries()) {
    const line = raw.trim();
    if (line === "") continue;
    const where = `eval_file line ${index + 1}`;
    let json: unknown;
    try {
      json = JSON.parse(line);
    } catch (err) {
      throw new EvalSourceError("INVALID", `${where} is not JSON (${(err as Error).message})`, "eval_file.jsonl");
    }
    const parsed = fileRow.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      const path = issue.path.join(".");
      throw new EvalSourceError("INVALID", `${where}: ${path === "" ? "" : `${path}: `}${issue.message}`, "eval_file.jsonl");
    }
    const r = parsed.data;
    if (ids.has(r.id)) throw new EvalSourceError("INVALID", `${where}: id ${JSON.stringify(r.id)} appears twice`, "eval_file.jsonl");
    ids.add(r.id);
    const rendered = render({ headingPath: r.heading_path ?? [], context: r.context, question: r.question });
    items.push({
      id: r.id,
      question: r.question,
      reference: (r.reference ?? r.answer)!,
      answerable: r.answerable,
      questionType: r.question_type ?? (r.answerable ? "answerable" : "unanswerable"),
      sourceDocument: r.source_document ?? "",
      ...rendered,
      ...(r.prompt === undefined ? {} : { prompt: r.prompt }),
    });
  }
  if (items.length === 0) throw new EvalSourceError("EMPTY", "the eval file holds no items", "eval_file.jsonl");
  return items;
}

/** The test split of a READY dataset version, through the dataset service's API (paged). */
export async function loadDatasetTestSplit(dataset: Client<typeof DatasetService>, datasetVersionId: string, signal?: AbortSignal): Promise<{ collection: string; items: EvalItem[] }> {
  let version;
  try {
    version = (await dataset.getDatasetVersion({ datasetVersionId }, { signal })).version;
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.NotFound) throw new EvalSourceError("NOT_FOUND", `dataset version ${datasetVersionId} does not exist`, "dataset_version_id");
    throw err;
  }
  if (version === undefined || version.status !== DatasetVersionStatus.READY) {
    const status = version === undefined ? "unknown" : (DatasetVersionStatus[version.status] ?? String(version.status)).toLowerCase();
    throw new EvalSourceError("NOT_READY", `dataset version ${datasetVersionId} is ${status}; only a ready version's test split can be evaluated`, "dataset_version_id");
  }
  const items: EvalItem[] = [];
  let pageToken = "";
  do {
    const res = await dataset.listExamples({ datasetVersionId, split: DatasetSplit.TEST, page: create(PageRequestSchema, { pageSize: 1000, pageToken }) }, { signal });
    for (const e of res.examples) {
      const answerable = e.kind !== ExampleKind.UNANSWERABLE;
      items.push({
        id: e.id,
        question: e.question,
        reference: e.answer,
        answerable,
        questionType: e.questionType || (answerable ? "answerable" : "unanswerable"),
        sourceDocument: e.sourceDocumentId,
        ...render({ headingPath: e.headingPath, context: e.context, question: e.question }),
      });
    }
    pageToken = res.page?.nextPageToken ?? "";
  } while (pageToken !== "");
  if (items.length === 0) throw new EvalSourceError("EMPTY", `dataset version ${datasetVersionId} has no test examples`, "dataset_version_id");
  return { collection: version.collection, items };
}

/** At most `max` items, a seeded sample kept in input order; all of them when `max` is unset or not smaller. */
export function sampleItems(items: readonly EvalItem[], max: number | undefined, seed: number): EvalItem[] {
  if (max === undefined || max >= items.length) return [...items];
  const random = seededDraws(seed);
  const order = items.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order
    .slice(0, max)
    .sort((a, b) => a - b)
    .map((i) => items[i]!);
}
