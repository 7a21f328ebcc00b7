import { busOptionsFromConfig, connectBus } from "@ragtune/bus";
import { GatewayService } from "@ragtune/proto";
import type { ServiceContext, ServiceInstance } from "@ragtune/rpc";
import type { BaseServiceConfig } from "@ragtune/config";

/**
 * The gateway service as it stands: connected to NATS (the RAGTUNE stream ensured), serving health and metrics.
 * GatewayService is registered with no handlers yet, so each of its RPCs answers Code.Unimplemented (connect-es does this
 * for every method an implementation leaves out) until the issue that implements it lands: never a fake answer.
 */
export async function startGatewayService({ config, logger }: ServiceContext<BaseServiceConfig>): Promise<ServiceInstance> {
  const bus = await connectBus(busOptionsFromConfig(config, "gateway", logger));
  await bus.ensureEventsStream();
  return {
    // Client apps call the gateway with Connect JSON over HTTP/1.1 as well as gRPC over h2c.
    allowHttp1: true,
    register: (router) => router.service(GatewayService, {}),
    stop: () => bus.close(),
  };
}
