import { createServer } from "node:net";

/**
 * Asks the kernel for a free TCP port on 127.0.0.1 (bind to port 0, read it back, close).
 * Another process may take the port before the caller binds it; prefer letting a server pick
 * its own port (`nats-server -p -1`) where it can.
 */
export function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === "string") {
        server.close();
        reject(new Error(`freePort: unexpected server address ${String(address)}`));
        return;
      }
      const { port } = address;
      server.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}
