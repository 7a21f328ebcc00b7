/**
 * GatewayService handlers: Ask and AskStream (retrieval over the collection's chunks, the prompt in the training
 * template, the promoted adapter through libs/llm, citations and the refusal flag).
 */
import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import type { LlmClient } from "@ragtune/llm";
import {
  type AnswerUsage,
  AnswerUsageSchema,
  type AskOptions,
  type Citation,
  CitationSchema,
  GatewayService,
  PageResponseSchema,
  type RetrievedChunk,
  RetrievedChunkSchema,
} from "@ragtune/proto";
import { invalidArgument, paginate } from "@ragtune/rpc";
import { citationsFor, isRefusal, modelCallError, questionMarkup, renderPrompt } from "./answer.js";
import type { CollectionIndex, CollectionIndexes } from "./collection-index.js";
import type { PromotionStore } from "./promotion-store.js";
import type { Promotions } from "./promotions.js";
import { type AccessControl, requireCollection } from "./access.js";
import type { RetrievedHit } from "@ragtune/retrieval";

export interface AskLimits {
  maxQuestionChars: number;
  defaultTopK: number;
  maxTopK: number;
  defaultMaxTokens: number;
  maxMaxTokens: number;
}

export const DEFAULT_ASK_LIMITS: AskLimits = { maxQuestionChars: 4000, defaultTopK: 4, maxTopK: 20, defaultMaxTokens: 256, maxMaxTokens: 2048 };

export interface GatewayDeps {
  /** API keys, tenants and rate limits; undefined: access control is off (GATEWAY_AUTH=none). */
  access?: AccessControl | undefined;
  indexes: CollectionIndexes;
  llm: Pick<LlmClient, "complete" | "streamCompletion">;
  promotions: Pick<PromotionStore, "current">;
  promotion: Pick<Promotions, "promote" | "rollback" | "list">;
  /** Model name of the base model at the endpoint (LLM_MODEL); undefined lets the endpoint pick. */
  baseModel: string | undefined;
  limits?: Partial<AskLimits>;
}

interface Prepared {
  index: CollectionIndex;
  hits: RetrievedHit[];
  prompt: string;
  model: string | undefined;
  adapterId: string;
  temperature: number;
  maxTokens: number;
}

export function collectionName(collection: string): string {
  return collection.trim() === "" ? "default" : collection.trim();
}

export function createGatewayService(deps: GatewayDeps): Partial<ServiceImpl<typeof GatewayService>> {
  const limits = { ...DEFAULT_ASK_LIMITS, ...deps.limits };

  const collectionOf = async (ctx: HandlerContext, name: string): Promise<string> => {
    const collection = collectionName(name);
    await requireCollection(deps.access, ctx, collection);
    return collection;
  };

  const prepare = async (req: { collection: string; question: string; options?: AskOptions | undefined }, ctx: HandlerContext): Promise<Prepared> => {
    const question = req.question.trim();
    if (question === "") throw invalidArgument("question", "question is empty; send the question to answer");
    if (question.length > limits.maxQuestionChars) {
      throw new ConnectError(`question is ${question.length} characters; at most ${limits.maxQuestionChars} are accepted`, Code.ResourceExhausted);
    }
    const markup = questionMarkup(question);
    if (markup !== undefined) throw invalidArgument("question", `question holds the prompt template markup ${JSON.stringify(markup)}; remove it`);
    const o = req.options;
    const topK = o?.topK ?? limits.defaultTopK;
    if (topK < 1 || topK > limits.maxTopK) throw invalidArgument("options.top_k", `top_k must be 1..${limits.maxTopK}, got ${topK}`);
    const maxTokens = o?.maxTokens ?? limits.defaultMaxTokens;
    if (maxTokens < 1 || maxTokens > limits.maxMaxTokens) throw invalidArgument("options.max_tokens", `max_tokens must be 1..${limits.maxMaxTokens}, got ${maxTokens}`);
    const temperature = o?.temperature ?? 0;
    if (!(temperature >= 0 && temperature <= 2)) throw invalidArgument("options.temperature", `temperature must be 0..2, got ${temperature}`);
    if (o?.useBaseModel === true && o.adapterId !== "") throw invalidArgument("options", "set either use_base_model or adapter_id, not both");

    const collection = await collectionOf(ctx, req.collection);
    let index: CollectionIndex;
    try {
      index = await deps.indexes.get(collection);
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.NotFound) {
        throw new ConnectError(`collection "${collection}" does not exist; ingest documents into it first`, Code.NotFound);
      }
      throw err;
    }
    if (index.retriever.size === 0) throw new ConnectError(`collection "${collection}" has no chunks; ingest documents into it first`, Code.FailedPrecondition);
    const hits = index.retriever.search(question, topK);
    let adapterId = "";
    let model = deps.baseModel;
    if (o?.adapterId) model = adapterId = o.adapterId;
    else if (o?.useBaseModel !== true) {
      // The promoted adapter is asked for by its content-addressed served name (promotions.ts).
      const promoted = await deps.promotions.current(collection);
      adapterId = promoted?.adapterId ?? "";
      if (promoted !== undefined) model = promoted.servedName || promoted.adapterId;
    }
    return {
      index,
      hits,
      prompt: renderPrompt(question, hits),
      model,
      adapterId,
      temperature,
      maxTokens,
    };
  };

  const context = (p: Prepared): RetrievedChunk[] =>
    p.hits.map((h) =>
      create(RetrievedChunkSchema, { chunkId: h.chunk.chunkId, documentId: h.chunk.documentId, headingPath: [...h.chunk.headingPath], text: h.chunk.text, score: h.score }),
    );
  const citations = (p: Prepared, answer: string, refused: boolean): Citation[] =>
    citationsFor(answer, refused, p.hits).map((c) =>
      create(CitationSchema, {
        chunkId: c.hit.chunk.chunkId,
        documentId: c.hit.chunk.documentId,
        documentTitle: p.index.titles.get(c.hit.chunk.documentId) ?? "",
        headingPath: [...c.hit.chunk.headingPath],
        support: c.support,
      }),
    );
  const usage = (u: { promptTokens: number; completionTokens: number } | undefined): AnswerUsage =>
    create(AnswerUsageSchema, { promptTokens: u?.promptTokens ?? 0, completionTokens: u?.completionTokens ?? 0 });

  return {
    async promoteAdapter(req, ctx) {
      const adapter = await deps.promotion.promote({
        collection: await collectionOf(ctx, req.collection),
        jobId: req.jobId.trim(),
        evalRunId: req.evalRunId.trim(),
        force: req.force,
        pin: req.pin,
        replacePinned: req.replacePinned,
      });
      return { adapter };
    },

    async getPromotedAdapter(req, ctx) {
      const adapter = await deps.promotions.current(await collectionOf(ctx, req.collection));
      return adapter === undefined ? {} : { adapter };
    },

    async rollbackAdapter(req, ctx) {
      return { adapter: await deps.promotion.rollback(await collectionOf(ctx, req.collection)) };
    },

    async listPromotions(req, ctx) {
      const collection = await collectionOf(ctx, req.collection);
      const page = paginate(await deps.promotion.list(collection), req.page, `promotions:${collection}`);
      return { promotions: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async ask(req, ctx) {
      const p = await prepare(req, ctx);
      let result;
      try {
        result = await deps.llm.complete(
          { prompt: p.prompt, temperature: p.temperature, maxTokens: p.maxTokens, ...(p.model !== undefined ? { model: p.model } : {}) },
          { signal: ctx.signal },
        );
      } catch (err) {
        throw modelCallError(err, p.model ?? "the endpoint's default model");
      }
      const answer = result.text.trim();
      const refused = isRefusal(answer);
      return {
        answer,
        refused,
        citations: citations(p, answer, refused),
        context: context(p),
        model: result.model || (p.model ?? ""),
        adapterId: p.adapterId,
        usage: usage(result.usage),
      };
    },

    async *askStream(req, ctx) {
      const p = await prepare(req, ctx);
      yield { part: { case: "context", value: { chunks: context(p), model: p.model ?? "", adapterId: p.adapterId } } };
      const stream = deps.llm.streamCompletion(
        { prompt: p.prompt, temperature: p.temperature, maxTokens: p.maxTokens, ...(p.model !== undefined ? { model: p.model } : {}) },
        { signal: ctx.signal },
      );
      try {
        for await (const delta of stream) {
          if (delta.text !== "") yield { part: { case: "textDelta", value: delta.text } };
        }
      } catch (err) {
        throw modelCallError(err, p.model ?? "the endpoint's default model");
      }
      const answer = stream.text.trim();
      const refused = isRefusal(answer);
      yield {
        part: {
          case: "done",
          value: { answer, refused, citations: citations(p, answer, refused), usage: usage(stream.usage), finishReason: stream.finishReason ?? "" },
        },
      };
    },
  };
}
