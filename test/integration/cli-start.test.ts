// `runner start` runs the verify-and-repair plan before anything else.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { spawn } from "node:child_process";
import path from "node:path";
import { runCli } from "../helpers/cli.js";
import { registerRunner, startTestControlPlane } from "../helpers/fixtures.js";
import { processStartTime } from "../../src/state/lock.js";
import { ExitCode } from "../../src/errors.js";

describe("runner start", { timeout: 60_000 }, () => {
  test("applies safe fixes, logs them, and passes its checks", async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    await fs.chmod(runner.stateDir, 0o750);
    const start = await runCli(["start", ...runner.flags]);
    assert.equal(start.code, ExitCode.OK, start.all);
    const lines = start.stderr.trim().split("\n").map((l) => JSON.parse(l) as { msg: string; finding?: string });
    assert.ok(lines.some((l) => l.finding === "state_dir_permissions" && /^repaired:/.test(l.msg)), start.stderr);
    assert.ok(lines.some((l) => l.msg === "startup checks passed"));
    assert.equal((await fs.stat(runner.stateDir)).mode & 0o777, 0o700);
    await assert.rejects(fs.stat(path.join(runner.stateDir, "runner.lock")), { code: "ENOENT" }, "the lock is released");
  });

  test("stops with the needs-operator exit code and the exact command when the credential was revoked", async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    const [record] = await plane.admin.listRunners();
    await plane.admin.revokeRunner(record!.runnerId);
    const start = await runCli(["start", ...runner.flags]);
    assert.equal(start.code, ExitCode.NEEDS_OPERATOR, start.all);
    assert.match(start.stderr, /runner repair --token-file <file with a new registration token>/);
  });

  test("exits with the upgrade code when unregistered state is fine but the control plane wants a newer agent", async (t) => {
    const { startControlPlane } = await import("../../src/control-plane/server.js");
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    const registration = JSON.parse(await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8")) as { url: string };
    // A second control plane sharing nothing but demanding a far newer agent, on the URL the runner knows.
    await plane.cp.close();
    const port = Number(new URL(registration.url).port);
    const strict = await startControlPlane({ port, minAgentVersion: "999.0.0", logger: (await import("pino")).pino({ level: "silent" }) });
    t.after(() => strict.close());
    const start = await runCli(["start", ...runner.flags]);
    assert.equal(start.code, ExitCode.UPGRADE_REQUIRED, start.all);
  });

  test("refuses to start while a live process holds the lock", async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    const holder = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"]);
    t.after(() => holder.kill("SIGKILL"));
    const pid = holder.pid!;
    const lock = { pid, startTime: await processStartTime(pid), hostname: "h", acquiredAt: new Date().toISOString() };
    await fs.writeFile(path.join(runner.stateDir, "runner.lock"), JSON.stringify(lock));
    const start = await runCli(["start", ...runner.flags]);
    assert.equal(start.code, ExitCode.ALREADY_RUNNING, start.all);
    assert.match(start.stderr, new RegExp(`another runner \\(pid ${pid}`));
  });

  test("exits with the unavailable code when the control plane cannot be reached", async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    await plane.cp.close();
    const start = await runCli(["start", ...runner.flags, "--request-timeout-ms", "2000"]);
    assert.equal(start.code, ExitCode.UNAVAILABLE, start.all);
    assert.match(start.stderr, /cannot reach the control plane/);
  });
});
