// A stand-in for a control plane (or a proxy in front of one) on loopback: it records each
// request and answers as the test says.
import type { TestContext } from "node:test";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { onCleanup } from "./cleanup.js";

export type Answer = (req: http.IncomingMessage, res: http.ServerResponse) => void;

export interface FakePlane {
  url: string;
  /** Every request the server got, as "METHOD path". */
  requests: string[];
}

export async function fakePlane(t: TestContext, answer: Answer): Promise<FakePlane> {
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    req.resume();
    req.on("end", () => answer(req, res));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  onCleanup(t, () => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve()))));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests };
}
