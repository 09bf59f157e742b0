// The transport rule (plain http:// only to loopback, unless --insecure-plaintext) holds for
// every verb that sends the control plane a credential, not only where the URL was first given:
// a registration.json that names a plain http:// URL of another host (edited by hand, or
// written when the opt-in was given) makes verify, repair, unregister and start refuse, exit 2
// and send nothing.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { runCli } from "../helpers/cli.js";
import { registerRunner, startTestControlPlane } from "../helpers/fixtures.js";
import { ExitCode } from "../../src/errors.js";
import { onCleanup } from "../helpers/cleanup.js";

/** A loopback HTTP server that records each request's headers and answers 503. */
async function startListener(t: TestContext): Promise<{ port: number; requests: IncomingHttpHeaders[] }> {
  const requests: IncomingHttpHeaders[] = [];
  const server = createServer((req, res) => {
    requests.push(req.headers);
    req.resume();
    res.writeHead(503, { "content-type": "text/plain" }).end("listener");
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  onCleanup(t, () => new Promise<void>((resolve) => server.close(() => resolve())));
  return { port: (server.address() as AddressInfo).port, requests };
}

test(
  "verify, repair, unregister and start refuse a registered plain http:// URL of another host unless --insecure-plaintext is given",
  { timeout: 90_000 },
  async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    const listener = await startListener(t);
    // 0.0.0.0 is not a loopback address by the rule, yet on Linux a connection to it reaches
    // this machine: the listener sees what a verb would have sent, and nothing leaves the host.
    const registrationFile = path.join(runner.stateDir, "registration.json");
    const registration = JSON.parse(await fs.readFile(registrationFile, "utf8")) as { url: string };
    registration.url = `http://0.0.0.0:${listener.port}`;
    await fs.writeFile(registrationFile, JSON.stringify(registration), { mode: 0o600 });

    for (const verb of [["verify"], ["repair"], ["unregister"], ["start", "--once"]]) {
      const run = await runCli([...verb, ...runner.flags], { timeoutMs: 30_000 });
      assert.equal(run.code, ExitCode.USAGE, `${verb.join(" ")}: ${run.all}`);
      assert.match(run.all, /refusing plain http:\/\/ to 0\.0\.0\.0/, verb.join(" "));
      assert.match(run.all, /--insecure-plaintext/, verb.join(" "));
      assert.equal(listener.requests.length, 0, `${verb.join(" ")} sent nothing`);
    }
    await fs.access(registrationFile); // unregister forgot nothing

    // With the opt-in the request goes out (the listener above is real: the zero meant something).
    const opted = await runCli(["verify", "--insecure-plaintext", ...runner.flags], { timeoutMs: 30_000 });
    assert.equal(opted.code, ExitCode.UNHEALTHY, opted.all);
    assert.equal(listener.requests.length, 1);
    assert.match(listener.requests[0]?.authorization ?? "", /^Bearer /);
  },
);
