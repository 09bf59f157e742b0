// The README's first command: the whole system on one machine. Starts the embedded
// reference control plane on loopback, registers a runner through the real CLI in a
// temporary state dir, and prints what `runner verify` and `runner status` say.
import { spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { startControlPlane } from "../src/control-plane/server.js";
import { AdminClient } from "../src/control-plane/admin-client.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const bin = path.join(root, "bin", "runner.js");

function section(title: string): void {
  process.stdout.write(`\n== ${title}\n`);
}

/** Runs the real CLI. Asynchronously: the control plane in this process must keep answering. */
function runner(args: string[], options: { quiet?: boolean } = {}): Promise<number> {
  if (!options.quiet) process.stdout.write(`$ runner ${args.join(" ")}\n`);
  const child = spawn(process.execPath, [bin, ...args], {
    stdio: ["ignore", options.quiet ? "ignore" : "inherit", options.quiet ? "ignore" : "inherit"],
    env: { ...process.env, RUNNER_LOG_FORMAT: "pretty" },
  });
  return new Promise((resolve) => child.on("close", (code) => resolve(code ?? 1)));
}

async function main(): Promise<number> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), "runner-demo-"));
  const stateDir = path.join(work, "state");
  const cp = await startControlPlane({ logger: pino({ level: "warn" }) });
  try {
    section("control plane");
    process.stdout.write(`embedded reference control plane listening on ${cp.url} (in memory)\n`);
    const admin = new AdminClient(cp.url, cp.adminToken!);
    const { token, expiresAt } = await admin.createRegistrationToken(600);
    const tokenFile = path.join(work, "registration-token");
    await fs.writeFile(tokenFile, token, { mode: 0o600 });
    process.stdout.write(`created a one-time registration token (expires ${expiresAt}) in ${tokenFile}\n`);

    const flags = ["--state-dir", stateDir];
    section("register");
    if (await runner(["register", "--url", cp.url, "--token-file", tokenFile, "--name", "demo-runner", "--labels", "demo,linux", ...flags]) !== 0) return 1;

    section("verify");
    const healthy = await runner(["verify", ...flags]);

    section("status");
    await runner(["status", ...flags]);

    section("the control plane's view");
    for (const r of await admin.listRunners()) process.stdout.write(`${r.runnerId}  ${r.name}  labels=${r.labels.join(",")}  host=${r.host.hostname}\n`);

    section("break something, then repair it");
    await fs.chmod(stateDir, 0o755);
    await runner(["verify", ...flags]);
    await runner(["repair", ...flags]);
    return healthy;
  } finally {
    // The demo used a throw-away state dir; forget its keychain entry too, if it made one.
    await runner(["unregister", "--local-only", "--state-dir", stateDir], { quiet: true });
    await cp.close();
    await fs.rm(work, { recursive: true, force: true });
  }
}

process.exitCode = await main();
