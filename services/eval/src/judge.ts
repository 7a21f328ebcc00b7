/**
 * The optional LLM-as-judge: a model grades each answer A (correct and supported by the context), B (partly correct
 * or partly supported) or C (wrong, or an answer where the context holds none), and flags hallucinations (claims the
 * context does not support), at temperature 0 with guided JSON through libs/llm.
 */
import type { LlmClient } from "@ragtune/llm";
import { z } from "zod";

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
export async function judgeAnswer(llm: Pick<LlmClient, "json">, model: string, input: JudgeInput, signal?: AbortSignal): Promise<JudgeVerdict> {
  const result = await llm.json(
    {
      model,
      schema: judgeVerdictSchema,
      schemaName: "verdict",
      temperature: 0,
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
