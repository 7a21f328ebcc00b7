/**
 * The adapter that serves each collection: a KV record per collection (`gateway-promotions`, key = collection).
 */
import type { Bus, TypedKv } from "@ragtune/bus";
import { type PromotedAdapter, PromotedAdapterSchema } from "@ragtune/proto";

export class PromotionStore {
  private constructor(readonly kv: TypedKv<typeof PromotedAdapterSchema>) {}

  static async open(bus: Bus, bucket = "gateway-promotions"): Promise<PromotionStore> {
    return new PromotionStore(await bus.kv(bucket, PromotedAdapterSchema));
  }

  /** The promoted adapter of a collection, if any. */
  async current(collection: string): Promise<PromotedAdapter | undefined> {
    return (await this.kv.get(kvKey(collection)))?.value;
  }
}

/** KV keys allow [-/_=.a-zA-Z0-9]; collection names are encoded so any name maps to one key. */
export function kvKey(collection: string): string {
  return /^[a-zA-Z0-9_-]+$/.test(collection) ? collection : `b64.${Buffer.from(collection).toString("base64url")}`;
}
