// An agent-only install: a copy of the built runner whose node_modules lack better-sqlite3,
// the optional dependency only the reference control plane needs (what `npm ci
// --omit=optional` leaves). The agent registers and connects; `runner control-plane` says what
// is missing and how to get it.
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { test, type TestContext } from "node:test";
import { REPO_ROOT, runCli } from "../helpers/cli.js";
import { startDaemon } from "../helpers/daemon.js";
import { startTestControlPlane, tempDir } from "../helpers/fixtures.js";
import { ExitCode } from "../../src/errors.js";

/** Copies the built runner (copies, not links: node resolves modules from a file's real path). */
async function agentOnlyInstall(t: TestContext): Promise<string> {
  const root = await tempDir(t, "runner-agent-only-");
  for (const entry of ["dist", "bin", "package.json", "systemd", "launchd"])
    await fs.cp(path.join(REPO_ROOT, entry), path.join(root, entry), { recursive: true });
  await fs.mkdir(path.join(root, "node_modules"));
  for (const name of await fs.readdir(path.join(REPO_ROOT, "node_modules"))) {
    if (name === "better-sqlite3") continue;
    await fs.symlink(path.join(REPO_ROOT, "node_modules", name), path.join(root, "node_modules", name));
  }
  return path.join(root, "bin", "runner.js");
}

test(
  "without better-sqlite3 the agent registers and connects, and control-plane says how to get it",
  { timeout: 60_000 },
  async (t) => {
    const bin = await agentOnlyInstall(t);
    const plane = await startTestControlPlane(t);
    const dir = await tempDir(t);
    const stateDir = ["--state-dir", path.join(dir, "state")];
    const register = await runCli(
      [
        "register",
        "--url",
        plane.cp.url,
        "--token-file",
        await plane.tokenFile(dir),
        "--name",
        "agent-only",
        ...stateDir,
        "--credential-store",
        "file",
      ],
      { bin },
    );
    assert.equal(register.code, ExitCode.OK, register.all);

    const daemon = startDaemon(t, [...stateDir, "--device-providers", "none"], {}, bin);
    await daemon.waitForLog((line) => line.msg === "connected to the control plane");
    assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);

    const controlPlane = await runCli(["control-plane", "--data", path.join(dir, "cp")], { bin });
    assert.equal(controlPlane.code, ExitCode.USAGE, controlPlane.all);
    assert.match(controlPlane.stderr, /needs the optional package better-sqlite3/);
    assert.match(controlPlane.stderr, /npm install better-sqlite3/);
  },
);
