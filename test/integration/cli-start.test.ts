// `runner start` runs the verify-and-repair plan before anything else.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { spawn } from "node:child_process";
import path from "node:path";
import { runCli } from "../helpers/cli.js";
import { registerRunner, startTestControlPlane, tempDir } from "../helpers/fixtures.js";
import { startDaemon } from "../helpers/daemon.js";
import { processStartTime } from "../../src/state/process-start.js";
import { ExitCode } from "../../src/errors.js";
import { LAUNCHD_MARKER_ENV } from "../../src/state/blocked.js";
import { onCleanup } from "../helpers/cleanup.js";

describe("runner start", () => {
  test(
    "applies safe fixes, logs them, passes its checks, connects, and exits 0 on SIGTERM",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      await fs.chmod(runner.stateDir, 0o750);
      const daemon = startDaemon(t, runner.flags);
      await daemon.waitForLog((l) => l.msg === "connected to the control plane");
      assert.ok(
        daemon.lines.some((l) => l.finding === "state_dir_permissions" && /^repaired:/.test(l.msg)),
        daemon.stderr(),
      );
      assert.ok(daemon.lines.some((l) => l.msg === "startup checks passed"));
      assert.equal((await fs.stat(runner.stateDir)).mode & 0o777, 0o700);
      const lock = JSON.parse(await fs.readFile(path.join(runner.stateDir, "runner.lock"), "utf8")) as { pid: number };
      assert.equal(lock.pid, daemon.child.pid, "the daemon holds the lock while it runs");
      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
      await assert.rejects(
        fs.stat(path.join(runner.stateDir, "runner.lock")),
        { code: "ENOENT" },
        "the lock is released",
      );
    },
  );

  test(
    "stops with the needs-operator exit code and the exact command when the credential was revoked",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const [record] = await plane.admin.listRunners();
      await plane.admin.revokeRunner(record!.runnerId);
      const start = await runCli(["start", ...runner.flags]);
      assert.equal(start.code, ExitCode.NEEDS_OPERATOR, start.all);
      assert.match(start.stderr, /runner repair --token-file <file with a new registration token>/);
    },
  );

  test("exits with the upgrade code when the control plane wants a newer agent", { timeout: 60_000 }, async (t) => {
    const { startControlPlane } = await import("../../src/control-plane/control-plane.js");
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    const registration = JSON.parse(await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8")) as {
      url: string;
    };
    // A second control plane on the URL the runner knows, demanding a far newer agent: it answers 426 before any other check.
    await plane.cp.close();
    const port = Number(new URL(registration.url).port);
    const strict = await startControlPlane({
      port,
      minAgentVersion: "999.0.0",
      logger: (await import("pino")).pino({ level: "silent" }),
    });
    onCleanup(t, () => strict.close());
    const marker = path.join(runner.stateDir, "launchd-marker");
    const start = await runCli(["start", ...runner.flags], { env: { [LAUNCHD_MARKER_ENV]: marker } });
    assert.equal(start.code, ExitCode.UPGRADE_REQUIRED, start.all);
    assert.equal(JSON.parse(await fs.readFile(marker, "utf8")).exitCode, ExitCode.UPGRADE_REQUIRED, "launchd is held");
  });

  test("refuses to start while a live process holds the lock", { timeout: 60_000 }, async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    const holder = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"]);
    onCleanup(t, () => holder.kill("SIGKILL"));
    const pid = holder.pid!;
    const lock = { pid, startTime: await processStartTime(pid), hostname: "h", acquiredAt: new Date().toISOString() };
    await fs.writeFile(path.join(runner.stateDir, "runner.lock"), JSON.stringify(lock));
    const start = await runCli(["start", ...runner.flags]);
    assert.equal(start.code, ExitCode.ALREADY_RUNNING, start.all);
    assert.match(start.stderr, new RegExp(`another runner \\(pid ${pid}`));
  });

  test(
    "exits 78 naming the directory when the state dir or the work dir cannot be created",
    { timeout: 60_000 },
    async (t) => {
      const dir = await tempDir(t);
      const file = path.join(dir, "a-file");
      await fs.writeFile(file, "");
      const underFile = await runCli(["start", "--state-dir", path.join(file, "state")]);
      assert.equal(underFile.code, ExitCode.NEEDS_OPERATOR, underFile.all);
      assert.match(underFile.stderr, /cannot create the directory .*a-file\/state: ENOTDIR/);
      assert.doesNotMatch(underFile.stderr, /unexpected error/);
      const repair = await runCli(["repair", "--state-dir", path.join(file, "state")]);
      assert.equal(repair.code, ExitCode.NEEDS_OPERATOR, repair.all);
      assert.match(repair.stderr, /cannot create the directory/);
      if (process.platform === "linux") {
        // /proc refuses a new dir with ENOENT although its parent exists: Node's recursive mkdir
        // then retried for ever at full CPU, and `start` never returned.
        const underProc = await runCli(["start", "--state-dir", "/proc/self/runner-state"], { timeoutMs: 20_000 });
        assert.equal(underProc.code, ExitCode.NEEDS_OPERATOR, underProc.all);
        assert.match(underProc.stderr, /cannot create the directory \/proc\/self\/runner-state/);
      }
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const badWorkDir = await runCli(["start", ...runner.flags, "--work-dir", path.join(file, "work")]);
      assert.equal(badWorkDir.code, ExitCode.NEEDS_OPERATOR, badWorkDir.all);
      // Found by the start-up checks, before the daemon would try to create it.
      assert.match(
        badWorkDir.stderr,
        /the work dir .*a-file\/work does not exist and cannot be created in .*a-file: ENOTDIR/,
      );
      assert.match(badWorkDir.stderr, /\[work_dir_unwritable\]/);
    },
  );

  test(
    "under launchd, a command line start refuses (an unknown flag) exits 2 and leaves the marker",
    { timeout: 60_000 },
    async (t) => {
      const dir = await tempDir(t);
      const marker = path.join(dir, "needs-operator");
      // A plist written by another version of the runner may carry a flag this one does not know.
      const unknown = await runCli(["start", "--no-such-flag"], { env: { [LAUNCHD_MARKER_ENV]: marker } });
      assert.equal(unknown.code, ExitCode.USAGE, unknown.all);
      const kept = JSON.parse(await fs.readFile(marker, "utf8")) as { exitCode: number; reason: string };
      assert.equal(kept.exitCode, ExitCode.USAGE);
      assert.match(kept.reason, /unknown option '--no-such-flag'/);
      await fs.rm(marker);
      const help = await runCli(["start", "--help"], { env: { [LAUNCHD_MARKER_ENV]: marker } });
      assert.equal(help.code, ExitCode.OK, help.all);
      const otherVerb = await runCli(["status", "--no-such-flag"], { env: { [LAUNCHD_MARKER_ENV]: marker } });
      assert.equal(otherVerb.code, ExitCode.USAGE, otherVerb.all);
      await assert.rejects(fs.access(marker), { code: "ENOENT" }, "only start leaves the marker");
    },
  );

  test(
    "starts anyway when the control plane cannot be reached, and connects once it is back",
    { timeout: 60_000 },
    async (t) => {
      const dataDir = await tempDir(t, "runner-cp-");
      const plane = await startTestControlPlane(t, { dataDir });
      const runner = await registerRunner(t, plane);
      const port = Number(new URL(plane.cp.url).port);
      await plane.cp.close();
      const daemon = startDaemon(t, [
        ...runner.flags,
        "--request-timeout-ms",
        "2000",
        "--reconnect-base-ms",
        "100",
        "--reconnect-cap-ms",
        "300",
      ]);
      await daemon.waitForLog((l) => /cannot reach the control plane/.test(l.msg));
      await daemon.waitForLog((l) => /reconnecting in/.test(l.msg));
      await startTestControlPlane(t, { dataDir, port });
      await daemon.waitForLog((l) => l.msg === "connected to the control plane");
      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
    },
  );

  test(
    "run by root on a state dir another user owns, start exits 78 and leaves nothing of root's there",
    { timeout: 60_000 },
    async (t) => {
      if (process.getuid?.() !== 0) return t.skip("needs root: it is root's start on another user's state dir");
      const nobody = 65534;
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      // The state dir of a service user (as `service install --system --run-as` leaves it).
      const giveAway = async (p: string): Promise<void> => {
        await fs.lchown(p, nobody, nobody);
        if ((await fs.lstat(p)).isDirectory())
          for (const name of await fs.readdir(p)) await giveAway(path.join(p, name));
      };
      await giveAway(runner.stateDir);
      const entries = async () => {
        const found: string[] = [];
        const walk = async (dir: string): Promise<void> => {
          for (const name of (await fs.readdir(dir)).sort()) {
            const p = path.join(dir, name);
            const stat = await fs.lstat(p);
            found.push(`${path.relative(runner.stateDir, p)} ${stat.uid}`);
            if (stat.isDirectory()) await walk(p);
          }
        };
        await walk(runner.stateDir);
        return found;
      };
      const before = await entries();

      const start = await runCli(["start", ...runner.flags]);
      assert.equal(start.code, ExitCode.NEEDS_OPERATOR, `no restart loop: ${start.all}`);
      assert.match(start.stderr, /refusing to run as root on the state dir .*, which belongs to (nobody|65534)/);
      assert.ok(
        start.stderr.includes(`sudo runner repair --state-dir ${runner.stateDir} --owner root`),
        "it names how to run it as root on purpose",
      );
      assert.deepEqual(await entries(), before, "no lock, socket, journal or marker of root's in the state dir");
      assert.equal((await fs.stat(runner.stateDir)).uid, nobody);

      // Under launchd, which cannot be told which exits not to restart, the plist's marker still holds the job.
      const marker = path.join(await tempDir(t), "needs-operator");
      const underLaunchd = await runCli(["start", ...runner.flags], { env: { [LAUNCHD_MARKER_ENV]: marker } });
      assert.equal(underLaunchd.code, ExitCode.NEEDS_OPERATOR, underLaunchd.all);
      assert.equal(JSON.parse(await fs.readFile(marker, "utf8")).exitCode, ExitCode.NEEDS_OPERATOR);

      const verify = await runCli(["verify", ...runner.flags]);
      assert.equal(verify.code, ExitCode.OK, `root's verify finds nothing of root's left: ${verify.all}`);
    },
  );
});

describe("ephemeral runners", () => {
  test(
    "start --once runs exactly one job, reports it, unregisters and exits 0; the next job waits for another runner",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const first = await plane.admin.submitJob({ job: { kind: "command", argv: ["sh", "-c", "echo one"], env: {} } });
      const second = await plane.admin.submitJob({ job: { kind: "command", argv: ["true"], env: {} } });
      const daemon = startDaemon(t, [...runner.flags, "--once", "--capacity", "2", "--device-providers", "none"]);
      assert.equal(await daemon.exited, ExitCode.OK, daemon.stderr());

      const jobs = await Promise.all([first, second].map(async (s) => (await plane.admin.getJob(s.job.jobId)).job));
      assert.deepEqual(jobs.map((job) => job.status).sort(), ["queued", "succeeded"], JSON.stringify(jobs));
      await assert.rejects(fs.access(path.join(runner.stateDir, "registration.json")), { code: "ENOENT" });
      assert.deepEqual(await plane.admin.listRunners(), [], "unregistered on the control plane");
      assert.ok(
        daemon.lines.some((line) => line.msg === "once: its one job is done and its result acknowledged"),
        daemon.stderr(),
      );
    },
  );

  test("start --exit-after-idle exits 0 after that long without a job", { timeout: 60_000 }, async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    const daemon = startDaemon(t, [...runner.flags, "--exit-after-idle", "1", "--device-providers", "none"]);
    await daemon.waitForLog((line) => line.msg === "connected to the control plane");
    assert.equal(await daemon.exited, ExitCode.OK, daemon.stderr());
    assert.ok(
      daemon.lines.some((line) => line.msg === "no job for 1 s: exiting (--exit-after-idle)"),
      daemon.stderr(),
    );
    await fs.access(path.join(runner.stateDir, "registration.json")); // an idle exit keeps the registration
  });
});
