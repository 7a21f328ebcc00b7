import { GatewayService } from "@ragtune/proto";
import { Code } from "@ragtune/rpc";
import { expectCode } from "@ragtune/testing";
import { createClient } from "@ragtune/rpc";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runKeysCommand } from "../src/keys-command.js";
import { startGatewayTestbed, type GatewayTestbed } from "./testbed.js";

let tb: GatewayTestbed;

async function keys(...argv: string[]): Promise<{ code: number; out: string[]; err: string[] }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runKeysCommand(argv, { NATS_URL: tb.nats.url }, (l) => out.push(l), (l) => err.push(l));
  return { code, out, err };
}

const client = (key?: string, protocol: "grpc" | "connect" = "grpc") =>
  createClient(GatewayService, { baseUrl: tb.gateway.url, protocol, ...(key === undefined ? {} : { authToken: key }) });

let acme: string;
let globex: string;
let globexDoc: string;

beforeAll(async () => {
  tb = await startGatewayTestbed(() => " An answer.", { GATEWAY_AUTH: "api-keys", GATEWAY_RATE_LIMIT: "1", GATEWAY_RATE_BURST: "1000", RPC_READ_MAX_BYTES: "65536" });
  await tb.ingestDocuments("acme-docs", { "a.md": "# Acme\n\nAcme rockets launch from the desert pad.\n" });
  globexDoc = (await tb.ingestDocuments("globex-docs", { "g.md": "# Globex\n\nGlobex reactors cool with heavy water.\n" })).get("g.md")!;
  acme = (await keys("create", "--tenant", "acme", "--name", "tests")).out[0]!;
  globex = (await keys("create", "--tenant", "globex")).out[0]!;
  expect((await keys("grant", "--tenant", "acme", "--collection", "acme-docs")).code).toBe(0);
  expect((await keys("grant", "--tenant", "globex", "--collection", "globex-docs")).code).toBe(0);
}, 120_000);

afterAll(async () => {
  await tb?.close();
});

describe("API keys", () => {
  it("are created once, stored hashed and listed without their secret", async () => {
    expect(acme).toMatch(/^rt_[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/);
    const listed = (await keys("list")).out.join("\n");
    expect(listed).toMatch(/\tacme\ttests\t/);
    expect(listed).not.toContain(acme.split(".")[1]);
    const stored = await tb.gateway.instance.access!.keys.list();
    expect(stored.every((r) => /^[0-9a-f]{64}$/.test(r.secretSha256))).toBe(true);
  });

  it("answer a call with a valid key, over gRPC and HTTP/1.1 JSON", async () => {
    expect((await client(acme).ask({ collection: "acme-docs", question: "Where do rockets launch?" })).answer).toBe("An answer.");
    const http = await fetch(`${tb.gateway.url}/ragtune.gateway.v1.GatewayService/Ask`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${acme}` },
      body: JSON.stringify({ collection: "acme-docs", question: "Where do rockets launch?" }),
    });
    expect(http.status).toBe(200);
  });

  it("turn away a call without a valid key: UNAUTHENTICATED with the reason", async () => {
    await expectCode(client().ask({ collection: "acme-docs", question: "q" }), Code.Unauthenticated, /requires an API key: send the header `authorization: Bearer rt_…`/);
    await expectCode(client("secret").ask({ collection: "acme-docs", question: "q" }), Code.Unauthenticated, /API key is malformed/);
    const forged = `${acme.split(".")[0]}.${"A".repeat(43)}`;
    await expectCode(client(forged).ask({ collection: "acme-docs", question: "q" }), Code.Unauthenticated, /not valid for this gateway/);
    await expectCode(client(`rt_${"0".repeat(16)}.${"A".repeat(43)}`).ask({ collection: "acme-docs", question: "q" }), Code.Unauthenticated, /not valid for this gateway/);
    const streamed = async () => {
      for await (const _ of client().askStream({ collection: "acme-docs", question: "q" })) void _;
    };
    await expectCode(streamed(), Code.Unauthenticated, /requires an API key/);
  });

  it("stop working once revoked", async () => {
    const temp = (await keys("create", "--tenant", "acme")).out[0]!;
    expect((await client(temp).ask({ collection: "acme-docs", question: "rockets" })).answer).toBe("An answer.");
    const id = temp.slice(3, 19);
    // The gateway holds the key (it authenticated with it): the revocation, made by another connection, reaches it
    // through its cache's watch of the key bucket.
    const learned = new Promise<void>((resolve) => {
      const off = tb.gateway.instance.access!.keys.cache.onChange((key) => {
        if (key === id) {
          off();
          resolve();
        }
      });
    });
    expect((await keys("revoke", id)).code).toBe(0);
    await learned;
    await expectCode(client(temp).ask({ collection: "acme-docs", question: "rockets" }), Code.Unauthenticated, new RegExp(`API key ${id} was revoked`));
  });

  it("the keys command explains bad usage with exit code 2", async () => {
    expect((await keys("create")).code).toBe(2);
    expect((await keys("frobnicate")).err[0]).toMatch(/unknown command "frobnicate"/);
    expect((await keys("revoke", "ffffffffffffffff")).code).toBe(1);
  });
});

describe("tenants", () => {
  it("see only their own collections on every API that names one", async () => {
    const a = client(acme);
    await expectCode(a.ask({ collection: "globex-docs", question: "reactors" }), Code.PermissionDenied, /collection "globex-docs" is not one of tenant "acme"'s collections/);
    await expectCode(a.ask({ collection: "no-such", question: "reactors" }), Code.PermissionDenied, /not one of tenant "acme"'s/);
    const stream = async () => {
      for await (const _ of a.askStream({ collection: "globex-docs", question: "reactors" })) void _;
    };
    await expectCode(stream(), Code.PermissionDenied, /not one of tenant "acme"'s/);
    await expectCode(a.getPromotedAdapter({ collection: "globex-docs" }), Code.PermissionDenied, /not one of tenant "acme"'s/);
    await expectCode(a.listPromotions({ collection: "globex-docs" }), Code.PermissionDenied, /not one of tenant "acme"'s/);
    await expectCode(a.rollbackAdapter({ collection: "globex-docs" }), Code.PermissionDenied, /not one of tenant "acme"'s/);
    await expectCode(a.promoteAdapter({ collection: "globex-docs", jobId: "j", force: true }), Code.PermissionDenied, /not one of tenant "acme"'s/);
    expect((await client(globex).ask({ collection: "globex-docs", question: "reactors" })).context[0]!.text).toMatch(/heavy water/);
  });

  it("read only their own collections, documents, datasets, jobs and lineage", async () => {
    const a = client(acme);
    expect((await a.listTenantCollections({})).collections.map((c) => c.name)).toEqual(["acme-docs"]);
    expect((await client(globex).listTenantCollections({})).collections.map((c) => c.name)).toEqual(["globex-docs"]);
    expect((await a.listCollectionDocuments({ collection: "acme-docs" })).documents.map((d) => d.sourceName)).toEqual(["a.md"]);
    const denied = /collection "globex-docs" is not one of tenant "acme"'s collections/;
    await expectCode(a.listCollectionDocuments({ collection: "globex-docs" }), Code.PermissionDenied, denied);
    await expectCode(a.listCollectionDatasetVersions({ collection: "globex-docs" }), Code.PermissionDenied, denied);
    await expectCode(a.listCollectionJobs({ collection: "globex-docs" }), Code.PermissionDenied, denied);
    await expectCode(a.getDocumentLineage({ documentId: globexDoc }), Code.PermissionDenied, denied);
  });

  it("cannot take another tenant's collection", async () => {
    const r = await keys("grant", "--tenant", "acme", "--collection", "globex-docs");
    expect(r.code).toBe(1);
    expect(r.err[0]).toMatch(/belongs to another tenant/);
  });
});

describe("limits", () => {
  it("refuse a request over the size limit", async () => {
    await expectCode(client(acme, "connect").ask({ collection: "acme-docs", question: "x".repeat(70_000) }), Code.ResourceExhausted, /message size|larger|exceeds/i);
    await expectCode(client(acme).ask({ collection: "acme-docs", question: "y".repeat(5_000) }), Code.ResourceExhausted, /at most 4000/);
  });

  it("rate-limit each key on its own: RESOURCE_EXHAUSTED saying when to retry", async () => {
    const limited = (await keys("create", "--tenant", "acme")).out[0]!;
    await tb.gateway.stop();
    // A gateway whose keys get a burst of 2 and then 1 request a minute.
    const gw = await tb.startGateway({ GATEWAY_AUTH: "api-keys", GATEWAY_RATE_LIMIT: "1", GATEWAY_RATE_BURST: "2" });
    try {
      const c = createClient(GatewayService, { baseUrl: gw.url, protocol: "grpc", authToken: limited });
      await c.ask({ collection: "acme-docs", question: "rockets" });
      await c.ask({ collection: "acme-docs", question: "rockets" });
      await expectCode(c.ask({ collection: "acme-docs", question: "rockets" }), Code.ResourceExhausted, /rate limit of 1 requests\/minute \(burst 2\) for API key [0-9a-f]{16} exceeded; retry in \d+ ms/);
      // Another key of the same tenant has its own budget.
      const other = createClient(GatewayService, { baseUrl: gw.url, protocol: "grpc", authToken: acme });
      expect((await other.ask({ collection: "acme-docs", question: "rockets" })).answer).toBe("An answer.");
    } finally {
      await gw.stop();
      tb.gateway = await tb.startGateway({ GATEWAY_AUTH: "api-keys" });
    }
  });
});
