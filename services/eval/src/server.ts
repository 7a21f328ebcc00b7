import { busOptionsFromConfig, connectBus } from "@ragtune/bus";
import { DatasetService, EvalService } from "@ragtune/proto";
import { createClient, type ServiceContext, type ServiceInstance } from "@ragtune/rpc";
import { type EvalConfig, gatesFromConfig, successRuleFromConfig } from "./config.js";
import { createEvalService } from "./eval-service.js";
import { RunExecutor, type RunExecutorDeps } from "./run-executor.js";
import { openRunStore } from "./run-store.js";

/** Handles of a started eval service (tests read them). */
export interface EvalInstance extends ServiceInstance {
  executor: RunExecutor;
}

/** Test hooks of the eval service (never set in production). */
export interface EvalServiceHooks {
  onAnswer?: RunExecutorDeps["onAnswer"];
}

/**
 * The eval service: eval runs as resources of the shared history, run in this process one at a time against the
 * OpenAI-compatible endpoint each run names; test splits read through the dataset service's API; reports in the
 * object store. Once the RPC server listens it resumes unfinished runs; stopping interrupts the running one, which
 * starts again on the next start or on another replica once its lease lapses.
 */
export function evalServiceStarter(hooks: EvalServiceHooks = {}) {
  return async function startEvalService({ config, logger }: ServiceContext<EvalConfig>): Promise<EvalInstance> {
    const bus = await connectBus(busOptionsFromConfig(config, "eval", logger));
    try {
      await bus.ensureEventsStream();
      const prefix = config.EVAL_BUCKET_PREFIX;
      const runs = await openRunStore(bus, prefix);
      const artifacts = await bus.artifacts(`${prefix}-artifacts`);
      const dataset =
        config.EVAL_DATASET_URL === undefined
          ? undefined
          : createClient(DatasetService, {
              baseUrl: config.EVAL_DATASET_URL,
              protocol: "grpc",
              timeoutMs: 60_000,
              ...(config.EVAL_DATASET_AUTH_TOKEN ? { authToken: config.EVAL_DATASET_AUTH_TOKEN } : {}),
            });
      const executor = new RunExecutor({
        runs,
        artifacts,
        ...(dataset === undefined ? {} : { dataset }),
        llm: config,
        gates: gatesFromConfig(config),
        successRule: successRuleFromConfig(config),
        logger: logger.child({ component: "run-executor" }),
        leaseMs: config.EVAL_RUN_LEASE,
        ...(hooks.onAnswer === undefined ? {} : { onAnswer: hooks.onAnswer }),
      });
      const service = createEvalService({
        runs,
        artifacts,
        executor,
        logger,
        defaults: { endpointUrl: config.LLM_BASE_URL, baseModel: config.LLM_MODEL, concurrency: config.EVAL_DEFAULT_CONCURRENCY, maxConcurrency: config.EVAL_MAX_CONCURRENCY },
        datasetConfigured: dataset !== undefined,
      });
      return {
        executor,
        register: (router) => router.service(EvalService, service),
        async onListening() {
          await executor.resume();
        },
        async stop() {
          await executor.close();
          await bus.close();
        },
      };
    } catch (err) {
      await bus.close();
      throw err;
    }
  };
}

export const startEvalService = evalServiceStarter();
