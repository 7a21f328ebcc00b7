import { busOptionsFromConfig, connectBus } from "@ragtune/bus";
import { DatasetService } from "@ragtune/proto";
import type { ServiceContext, ServiceInstance } from "@ragtune/rpc";
import type { BaseServiceConfig } from "@ragtune/config";

/**
 * The dataset service as it stands: connected to NATS (the RAGTUNE stream ensured), serving health and metrics.
 * DatasetService is registered with no handlers yet, so each of its RPCs answers Code.Unimplemented (connect-es does this
 * for every method an implementation leaves out) until the issue that implements it lands: never a fake answer.
 */
export async function startDatasetService({ config, logger }: ServiceContext<BaseServiceConfig>): Promise<ServiceInstance> {
  const bus = await connectBus(busOptionsFromConfig(config, "dataset", logger));
  await bus.ensureEventsStream();
  return {
    register: (router) => router.service(DatasetService, {}),
    stop: () => bus.close(),
  };
}
