/**
 * Who may call the gateway and what they reach: API keys (hashed at rest), tenants owning collections, and a rate
 * limit per key. `guardService` wraps the service's handlers: every call is authenticated (UNAUTHENTICATED), counted
 * against its key's rate (RESOURCE_EXHAUSTED), and handlers check collections against the caller's tenant
 * (PERMISSION_DENIED) through `requireCollection`.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { create, type DescService } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createContextKey, type HandlerContext } from "@connectrpc/connect";
import { type Bus, KvCache, RevisionConflictError, type TypedKv } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import { type ApiKeyRecord, ApiKeyRecordSchema, CollectionTenantSchema } from "@ragtune/proto";
import { kvKey } from "./promotion-store.js";

/** The authenticated caller of a request. */
export interface Caller {
  keyId: string;
  tenant: string;
}

const callerKey = createContextKey<Caller | undefined>(undefined, { description: "ragtune gateway caller" });

/** The caller of the current request (set by guardService); undefined when access control is off. */
export function callerOf(ctx: Pick<HandlerContext, "values">): Caller | undefined {
  return ctx.values.get(callerKey);
}

const KEY_RE = /^rt_([a-f0-9]{16})\.([A-Za-z0-9_-]{43})$/;
const TENANT_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");

export class ApiKeys {
  private constructor(
    readonly kv: TypedKv<typeof ApiKeyRecordSchema>,
    /** Every request authenticates: a key is read from the server once, then kept current by the cache's watch (a revocation anywhere reaches it in milliseconds). */
    readonly cache: KvCache<typeof ApiKeyRecordSchema>,
  ) {}

  static async open(bus: Bus, bucket: string): Promise<ApiKeys> {
    const kv = await bus.kv(bucket, ApiKeyRecordSchema);
    return new ApiKeys(kv, await KvCache.open(kv));
  }

  /** A new key for a tenant: the key text is returned once, only its hash is stored. */
  async create(tenant: string, name: string): Promise<{ key: string; record: ApiKeyRecord }> {
    if (!TENANT_RE.test(tenant)) throw new Error(`tenant "${tenant}" is not a valid name: use lowercase letters, digits, '_' and '-' (up to 63)`);
    const id = randomBytes(8).toString("hex");
    const secret = randomBytes(32).toString("base64url");
    const record = create(ApiKeyRecordSchema, { id, tenant, name, secretSha256: sha256(secret), createdAt: timestampFromDate(new Date()) });
    this.cache.learn(id, record, await this.kv.create(id, record));
    return { key: `rt_${id}.${secret}`, record };
  }

  /** Revokes a key by its ID (the part after `rt_`, before the dot). */
  async revoke(id: string): Promise<ApiKeyRecord> {
    const entry = await this.kv.get(id);
    if (entry === null) throw new Error(`no API key with ID ${id}`);
    if (entry.value.revokedAt !== undefined) return entry.value;
    const record = create(ApiKeyRecordSchema, { ...entry.value, revokedAt: timestampFromDate(new Date()) });
    this.cache.learn(id, record, await this.kv.update(id, record, entry.revision));
    return record;
  }

  async list(): Promise<ApiKeyRecord[]> {
    const out: ApiKeyRecord[] = [];
    for await (const e of this.kv.entries()) out.push(e.value);
    return out;
  }

  /** The caller of an `authorization: Bearer rt_…` header value; UNAUTHENTICATED with the reason otherwise. */
  async authenticate(header: string | null): Promise<Caller> {
    const bearer = header === null ? null : /^Bearer\s+(\S+)$/i.exec(header.trim());
    if (bearer === null) throw new ConnectError("this gateway requires an API key: send the header `authorization: Bearer rt_…`", Code.Unauthenticated);
    const m = KEY_RE.exec(bearer[1]!);
    if (m === null) throw new ConnectError("the API key is malformed: gateway keys look like rt_<16 hex>.<43 characters>", Code.Unauthenticated);
    const entry = await this.cache.get(m[1]!);
    const expected = Buffer.from(entry?.value.secretSha256 ?? "0".repeat(64), "hex");
    const actual = Buffer.from(sha256(m[2]!), "hex");
    if (entry === null || !timingSafeEqual(expected, actual)) throw new ConnectError("the API key is not valid for this gateway", Code.Unauthenticated);
    if (entry.value.revokedAt !== undefined) throw new ConnectError(`the API key ${entry.value.id} was revoked; ask for a new one`, Code.Unauthenticated);
    return { keyId: entry.value.id, tenant: entry.value.tenant };
  }
}

/** Which tenant owns each collection. */
export class Tenancy {
  private constructor(
    readonly kv: TypedKv<typeof CollectionTenantSchema>,
    /** Every request that names a collection reads its owner: from the server once, then from this watched cache. */
    readonly cache: KvCache<typeof CollectionTenantSchema>,
  ) {}

  static async open(bus: Bus, bucket: string): Promise<Tenancy> {
    const kv = await bus.kv(bucket, CollectionTenantSchema);
    return new Tenancy(kv, await KvCache.open(kv));
  }

  async owner(collection: string): Promise<string | undefined> {
    return (await this.cache.get(kvKey(collection)))?.value.tenant;
  }

  /** Gives a collection to a tenant; fails when another tenant owns it. Idempotent for the same tenant. */
  async grant(collection: string, tenant: string): Promise<void> {
    if (!TENANT_RE.test(tenant)) throw new ConnectError(`tenant "${tenant}" is not a valid name`, Code.InvalidArgument);
    const current = await this.owner(collection);
    if (current === tenant) return;
    if (current !== undefined) throw new ConnectError(`collection "${collection}" belongs to another tenant`, Code.PermissionDenied);
    try {
      const record = create(CollectionTenantSchema, { collection, tenant, grantedAt: timestampFromDate(new Date()) });
      this.cache.learn(kvKey(collection), record, await this.kv.create(kvKey(collection), record));
    } catch (err) {
      if (!(err instanceof RevisionConflictError)) throw err;
      if ((await this.owner(collection)) !== tenant) throw new ConnectError(`collection "${collection}" belongs to another tenant`, Code.PermissionDenied);
    }
  }

  /** Collections of a tenant. */
  async collections(tenant: string): Promise<string[]> {
    const out: string[] = [];
    for await (const e of this.kv.entries()) if (e.value.tenant === tenant) out.push(e.value.collection);
    return out.sort();
  }
}

/** A token bucket per key: `ratePerMinute` sustained, `burst` at once. In memory, per gateway replica. */
export class RateLimiter {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    readonly ratePerMinute: number,
    readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Takes a token for `key`; returns 0 when granted, else the milliseconds until one is available. */
  take(key: string): number {
    const t = this.now();
    const b = this.#buckets.get(key) ?? { tokens: this.burst, at: t };
    b.tokens = Math.min(this.burst, b.tokens + ((t - b.at) / 60_000) * this.ratePerMinute);
    b.at = t;
    this.#buckets.set(key, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - b.tokens) / this.ratePerMinute) * 60_000);
  }
}

export interface AccessControl {
  keys: ApiKeys;
  tenancy: Tenancy;
  limiter: RateLimiter;
  logger: Logger;
}

/** PERMISSION_DENIED unless the caller's tenant owns the collection (no caller: access control is off). */
export async function requireCollection(access: AccessControl | undefined, ctx: Pick<HandlerContext, "values">, collection: string): Promise<void> {
  const caller = callerOf(ctx);
  if (access === undefined || caller === undefined) return;
  if ((await access.tenancy.owner(collection)) !== caller.tenant) {
    throw new ConnectError(`collection "${collection}" is not one of tenant "${caller.tenant}"'s collections`, Code.PermissionDenied);
  }
}

type AnyHandler = (req: unknown, ctx: HandlerContext) => unknown;

/** The service's handlers behind authentication and the per-key rate limit. */
export function guardService<S extends DescService, I extends Record<string, unknown>>(service: S, impl: I, access: AccessControl): I {
  const check = async (ctx: HandlerContext): Promise<void> => {
    const caller = await access.keys.authenticate(ctx.requestHeader.get("authorization"));
    const waitMs = access.limiter.take(caller.keyId);
    if (waitMs > 0) {
      access.logger.warn({ keyId: caller.keyId, tenant: caller.tenant }, "rate limited");
      throw new ConnectError(
        `rate limit of ${access.limiter.ratePerMinute} requests/minute (burst ${access.limiter.burst}) for API key ${caller.keyId} exceeded; retry in ${waitMs} ms`,
        Code.ResourceExhausted,
      );
    }
    ctx.values.set(callerKey, caller);
  };
  const out: Record<string, unknown> = {};
  for (const method of service.methods) {
    const handler = impl[method.localName] as AnyHandler | undefined;
    if (handler === undefined) continue;
    out[method.localName] =
      method.methodKind === "server_streaming"
        ? async function* (req: unknown, ctx: HandlerContext) {
            await check(ctx);
            yield* handler(req, ctx) as AsyncIterable<unknown>;
          }
        : async (req: unknown, ctx: HandlerContext) => {
            await check(ctx);
            return handler(req, ctx);
          };
  }
  return out as I;
}
