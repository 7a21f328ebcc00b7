/**
 * The operator's command for gateway access, run beside the gateway with its environment (NATS_*,
 * GATEWAY_BUCKET_PREFIX):
 *
 *   keys create --tenant <tenant> [--name <what for>]   prints the new key once (only its hash is stored)
 *   keys revoke <key ID>
 *   keys list
 *   keys grant --tenant <tenant> --collection <collection>   gives a collection to a tenant
 *
 * `npm run -w @ragtune/gateway-service keys -- create --tenant acme --name ci`. Exit codes: 0 done, 2 bad usage or
 * environment, 1 failed.
 */
import { parseArgs } from "node:util";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { busOptionsFromConfig, connectBus } from "@ragtune/bus";
import { ConfigError, loadConfig } from "@ragtune/config";
import { createLogger } from "@ragtune/logger";
import { ApiKeys, Tenancy } from "./access.js";
import { gatewayConfigSchema } from "./config.js";

export const KEYS_USAGE = `usage:
  keys create --tenant <tenant> [--name <what for>]
  keys revoke <key ID>
  keys list
  keys grant --tenant <tenant> --collection <collection>`;

/** Runs one keys command; returns the exit code. */
export async function runKeysCommand(argv: string[], env: Record<string, string | undefined>, out: (line: string) => void, err: (line: string) => void): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: { tenant: { type: "string" }, name: { type: "string" }, collection: { type: "string" } } });
  } catch (e) {
    err(`${(e as Error).message}\n${KEYS_USAGE}`);
    return 2;
  }
  const [command, ...rest] = parsed.positionals;
  const v = parsed.values;
  const usage = (message: string) => {
    err(`${message}\n${KEYS_USAGE}`);
    return 2;
  };
  if (command === "create" && v.tenant === undefined) return usage("create needs --tenant");
  if (command === "revoke" && rest.length !== 1) return usage("revoke needs the key ID");
  if (command === "grant" && (v.tenant === undefined || v.collection === undefined)) return usage("grant needs --tenant and --collection");
  if (!["create", "revoke", "list", "grant"].includes(command ?? "")) return usage(command === undefined ? "no command given" : `unknown command "${command}"`);

  let config;
  try {
    config = loadConfig("gateway", gatewayConfigSchema, env);
  } catch (e) {
    if (e instanceof ConfigError) {
      err(e.message);
      return 2;
    }
    throw e;
  }
  const logger = createLogger({ svc: "gateway-keys", level: "silent" });
  const bus = await connectBus(busOptionsFromConfig(config, "gateway-keys", logger));
  try {
    const prefix = config.GATEWAY_BUCKET_PREFIX;
    switch (command) {
      case "create": {
        const keys = await ApiKeys.open(bus, `${prefix}-api-keys`);
        const { key, record } = await keys.create(v.tenant!, v.name ?? "");
        out(key);
        err(`created key ${record.id} for tenant ${record.tenant}; it is shown only now`);
        return 0;
      }
      case "revoke": {
        const record = await (await ApiKeys.open(bus, `${prefix}-api-keys`)).revoke(rest[0]!);
        out(`revoked ${record.id} (tenant ${record.tenant})`);
        return 0;
      }
      case "list": {
        for (const r of await (await ApiKeys.open(bus, `${prefix}-api-keys`)).list()) {
          const revoked = r.revokedAt === undefined ? "active" : `revoked ${timestampDate(r.revokedAt).toISOString()}`;
          out(`${r.id}\t${r.tenant}\t${r.name}\t${r.createdAt === undefined ? "" : timestampDate(r.createdAt).toISOString()}\t${revoked}`);
        }
        return 0;
      }
      default: {
        await (await Tenancy.open(bus, `${prefix}-tenancy`)).grant(v.collection!, v.tenant!);
        out(`collection ${v.collection} belongs to tenant ${v.tenant}`);
        return 0;
      }
    }
  } catch (e) {
    err((e as Error).message);
    return 1;
  } finally {
    await bus.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  process.exitCode = await runKeysCommand(process.argv.slice(2), process.env, (l) => process.stdout.write(`${l}\n`), (l) => process.stderr.write(`${l}\n`));
}
