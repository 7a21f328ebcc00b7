import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { StringValueSchema } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { skipSettledRequestErrors, type Bus } from "../src/index.js";
import { startHarness, type Harness } from "./harness.js";

// The client's own errors module (the instance its requests use), to count the RequestErrors they build.
const require = createRequire(import.meta.url);
const errorsModule = require(join(dirname(require.resolve("@nats-io/nats-core")), "errors.js")) as { RequestError: new (message?: string, options?: ErrorOptions) => Error };
const OriginalRequestError = errorsModule.RequestError;
let built: string[] = [];

let harness: Harness;
let bus: Bus;
beforeAll(async () => {
  errorsModule.RequestError = class CountedRequestError extends OriginalRequestError {
    constructor(message?: string, options?: ErrorOptions) {
      super(message, options);
      built.push(message ?? "");
    }
  };
  harness = await startHarness();
  bus = await harness.connect();
});
afterAll(async () => {
  errorsModule.RequestError = OriginalRequestError;
  await harness.close();
});

describe("skipSettledRequestErrors", () => {
  it("is on for every bus: answered requests build no error; a request without an answer still fails as before", async () => {
    expect(skipSettledRequestErrors()).toBe(true);
    const kv = await bus.kv("settled", StringValueSchema);
    built = [];
    await Promise.all(Array.from({ length: 50 }, (_, i) => kv.put(`k${i}`, { value: `v${i}` })));
    const values = await Promise.all(Array.from({ length: 50 }, (_, i) => kv.get(`k${i}`)));
    expect(values.map((v) => v?.value.value)).toEqual(Array.from({ length: 50 }, (_, i) => `v${i}`));
    expect(built).toEqual([]);

    // No responder: rejected with the client's error, as without the patch; a timeout likewise.
    await expect(bus.nc.request("settled.nobody", "ping", { timeout: 1_000 })).rejects.toThrow(/no responders/i);
    const silent = bus.nc.subscribe("settled.silent");
    await expect(bus.nc.request("settled.silent", "ping", { timeout: 200 })).rejects.toThrow(/timeout/i);
    silent.unsubscribe();
    // And an answered request on a raw subject.
    const echo = bus.nc.subscribe("settled.echo", { callback: (_err, m) => void m.respond(m.data) });
    built = [];
    expect((await bus.nc.request("settled.echo", "hello", { timeout: 1_000 })).string()).toBe("hello");
    expect(built).toEqual([]);
    echo.unsubscribe();
  });
});
