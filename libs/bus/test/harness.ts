import { createLogger, type Logger } from "@ragtune/logger";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { connectBus, type Bus } from "../src/index.js";

export const silentLogger: Logger = createLogger({ svc: "bus-test", level: process.env.TEST_LOG_LEVEL ?? "silent" });

/** A real nats-server plus the buses connected to it; `close()` drains them and stops the server. */
export interface Harness {
  server: NatsServerHandle;
  connect(name?: string): Promise<Bus>;
  close(): Promise<void>;
}

export async function startHarness(): Promise<Harness> {
  const server = await startNatsServer();
  const buses: Bus[] = [];
  return {
    server,
    async connect(name = "bus-test") {
      const bus = await connectBus({ servers: server.url, name, logger: silentLogger, reconnectTimeWaitMs: 100, reconnectJitterMs: 50 });
      buses.push(bus);
      return bus;
    },
    async close() {
      await Promise.all(buses.map((b) => b.close()));
      await server.stop();
    },
  };
}

/** Collects items and lets a test await "at least n collected" without polling or sleeping. */
export class Collector<T> {
  readonly items: T[] = [];
  #waiters: { n: number; resolve: () => void }[] = [];

  push(item: T): void {
    this.items.push(item);
    this.#waiters = this.#waiters.filter((w) => {
      if (this.items.length >= w.n) {
        w.resolve();
        return false;
      }
      return true;
    });
  }

  waitFor(n: number): Promise<void> {
    if (this.items.length >= n) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ n, resolve }));
  }
}
