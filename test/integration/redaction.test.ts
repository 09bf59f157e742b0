// Secrets never appear in logs or in any file outside the credential store.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { runCli } from "../helpers/cli.js";
import { startDaemon } from "../helpers/daemon.js";
import { startTestControlPlane, tempDir } from "../helpers/fixtures.js";
import { ExitCode } from "../../src/errors.js";

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(full)));
    else out.push(full);
  }
  return out;
}

test(
  "the registration token and the credential appear nowhere in debug output or outside the credential store",
  { timeout: 60_000 },
  async (t) => {
    const plane = await startTestControlPlane(t);
    const dir = await tempDir(t);
    const stateDir = path.join(dir, "state");
    const { token } = await plane.admin.createRegistrationToken(60);
    const flags = ["--state-dir", stateDir];
    // In the environment, which every verb shares: not every verb takes these settings' flags.
    const env = { RUNNER_CREDENTIAL_STORE: "file", RUNNER_LOG_LEVEL: "debug", RUNNER_LOG_FORMAT: "json" };

    // --token on purpose: the most exposed way to pass it must still keep it out of the output.
    const outputs = [await runCli(["register", "--url", plane.cp.url, "--token", token, ...flags], { env })];
    assert.equal(outputs[0]?.code, ExitCode.OK, outputs[0]?.all);
    await fs.chmod(stateDir, 0o755); // something for start to repair, so the repair path logs too
    const daemon = startDaemon(t, flags, env);
    await daemon.waitForLog((l) => l.msg === "connected to the control plane");
    const daemonCode = await daemon.stop("SIGTERM");
    outputs.push({ code: daemonCode, stdout: "", stderr: daemon.stderr(), all: daemon.stderr() });
    outputs.push(await runCli(["verify", ...flags], { env }));
    outputs.push(await runCli(["status", "--json", ...flags], { env }));
    assert.ok(
      outputs.every((o) => o.code === ExitCode.OK),
      outputs.map((o) => o.all).join("\n"),
    );
    assert.match(outputs[1]?.stderr ?? "", /"level":20/, "debug lines were written");
    assert.match(outputs[1]?.stderr ?? "", /repaired/, "the repair path logged");

    const stored = JSON.parse(await fs.readFile(path.join(stateDir, "credential"), "utf8")) as { credential: string };
    const secrets = { "registration token": token, credential: stored.credential };
    for (const [what, secret] of Object.entries(secrets)) {
      for (const output of outputs) assert.ok(!output.all.includes(secret), `the ${what} leaked into CLI output`);
      assert.ok(!plane.logs().includes(secret), `the ${what} leaked into the control plane's debug log`);
      for (const file of await filesUnder(dir)) {
        if (file === path.join(stateDir, "credential")) continue;
        const bytes = await fs.readFile(file, "utf8");
        assert.ok(!bytes.includes(secret), `the ${what} is in ${file}`);
      }
    }
    assert.ok(
      plane.logs().includes("/runners/register"),
      "the control plane logged the request (so the check above means something)",
    );
  },
);
