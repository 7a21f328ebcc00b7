import { busOptionsFromConfig, connectBus } from "@ragtune/bus";
import { EvalService } from "@ragtune/proto";
import type { ServiceContext, ServiceInstance } from "@ragtune/rpc";
import type { BaseServiceConfig } from "@ragtune/config";

/**
 * The eval service as it stands: connected to NATS (the RAGTUNE stream ensured), serving health and metrics.
 * EvalService is registered with no handlers yet, so each of its RPCs answers Code.Unimplemented (connect-es does this
 * for every method an implementation leaves out) until the issue that implements it lands: never a fake answer.
 */
export async function startEvalService({ config, logger }: ServiceContext<BaseServiceConfig>): Promise<ServiceInstance> {
  const bus = await connectBus(busOptionsFromConfig(config, "eval", logger));
  await bus.ensureEventsStream();
  return {
    register: (router) => router.service(EvalService, {}),
    stop: () => bus.close(),
  };
}
