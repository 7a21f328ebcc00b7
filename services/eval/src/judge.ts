/**
 * The optional LLM-as-judge: a model grades each answer A (correct and supported by the context), B (partly correct
 * or partly supported) or C (wrong, or an answer where the context holds none), and flags hallucinations (claims the
 * context does not support), at temperature 0 with guided JSON through libs/llm.
 */
import type { LlmClient } from "@ragtune/llm";
import { z } from "zod";
import { isRefusal } from "./metrics.js";

export const judgeVerdictSchema = z.object({
  grade: z.enum(["A", "B", "C"]),
  hallucination: z.boolean(),
});

export type JudgeVerdict = z.infer<typeof judgeVerdictSchema>;

export const JUDGE_INSTRUCTIONS = [
  "You grade answers of a question-answering assistant that must answer only from the given context.",
  "Grade A: the answer is correct, complete enough, and every claim is supported by the context; or the context does not hold the answer and the answer says so.",
  "Grade B: the answer is partly correct or partly supported, or correct but padded with unrelated text.",
  "Grade C: the answer is wrong, empty, garbled, answers although the context does not hold the answer, or refuses although it does.",
  "hallucination is true when the answer states anything the context does not support.",
  'Reply with JSON only: {"grade": "A" | "B" | "C", "hallucination": true | false}.',
].join("\n");

export interface JudgeInput {
  context: string;
  question: string;
  reference: string;
  answerable: boolean;
  answer: string;
}

/** The user message the judge grades. */
export function judgePrompt(input: JudgeInput): string {
  return [
    `Context:\n${input.context}`,
    `Question: ${input.question}`,
    `Reference answer: ${input.reference}`,
    `The context ${input.answerable ? "holds" : "does not hold"} the answer.`,
    `Answer to grade:\n${input.answer === "" ? "(empty)" : input.answer}`,
  ].join("\n\n");
}

/** One verdict; throws the client's LlmError when the judge cannot be reached or keeps answering off-schema. */
export async function judgeAnswer(
  llm: Pick<LlmClient, "json">,
  model: string,
  input: JudgeInput,
  signal?: AbortSignal,
  sampling: { temperature: number; seed?: number } = { temperature: 0 },
): Promise<JudgeVerdict> {
  const result = await llm.json(
    {
      model,
      schema: judgeVerdictSchema,
      schemaName: "verdict",
      temperature: sampling.temperature,
      ...(sampling.seed === undefined ? {} : { seed: sampling.seed }),
      maxTokens: 64,
      messages: [
        { role: "system", content: JUDGE_INSTRUCTIONS },
        { role: "user", content: judgePrompt(input) },
      ],
    },
    signal === undefined ? {} : { signal },
  );
  return result.value;
}

const normalized = (text: string) => text.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, " ").trim();

/**
 * The verdict the deterministic checks give without a judge, or undefined when they cannot decide: an empty answer is
 * C; the refusal sentence is A on an unanswerable item and C on an answerable one; an answer equal to the reference
 * (case and punctuation aside) is A.
 */
export function decidedVerdict(input: Pick<JudgeInput, "answerable" | "reference" | "answer">): JudgeVerdict | undefined {
  const answer = normalized(input.answer);
  if (answer === "") return { grade: "C", hallucination: false };
  if (isRefusal(input.answer)) return { grade: input.answerable ? "C" : "A", hallucination: false };
  if (input.answerable && answer === normalized(input.reference)) return { grade: "A", hallucination: false };
  return undefined;
}

/**
 * k verdicts of one answer (k = 1: temperature 0; above: temperature 0.7, seeds 1..k): the majority grade (ties go to
 * the lower grade), hallucination when most verdicts say so, and the share of verdicts that agree with the majority.
 */
export async function judgeSampled(
  llm: Pick<LlmClient, "json">,
  model: string,
  input: JudgeInput,
  samples: number,
  signal?: AbortSignal,
): Promise<{ verdict: JudgeVerdict; agreement: number }> {
  if (samples <= 1) return { verdict: await judgeAnswer(llm, model, input, signal), agreement: 1 };
  const verdicts: JudgeVerdict[] = [];
  for (let seed = 1; seed <= samples; seed++) verdicts.push(await judgeAnswer(llm, model, input, signal, { temperature: 0.7, seed }));
  const counts = new Map<JudgeVerdict["grade"], number>();
  for (const v of verdicts) counts.set(v.grade, (counts.get(v.grade) ?? 0) + 1);
  const top = Math.max(...counts.values());
  const grade = (["C", "B", "A"] as const).find((g) => counts.get(g) === top)!;
  const hallucination = verdicts.filter((v) => v.hallucination).length * 2 > verdicts.length;
  return { verdict: { grade, hallucination }, agreement: top / verdicts.length };
}
