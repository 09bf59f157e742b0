// One real test per repair finding: each breaks a registered runner's state for real, shows
// that `runner verify` reports it, that `runner repair` fixes it (or refuses with the exact
// command to run), and that the outbox of unsent results survives untouched.
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { spawn, spawnSync } from "node:child_process";
import path from "node:path";
import { runCli as runCliWithin } from "../helpers/cli.js";
import { startDaemon } from "../helpers/daemon.js";
import {
  registerRunner,
  requireKeychain,
  startTestControlPlane,
  tempDir,
  type RegisteredRunner,
  type TestControlPlane,
} from "../helpers/fixtures.js";
import { KeychainCredentialStore } from "../../src/credentials/keychain-store.js";
import { processStartTime } from "../../src/state/process-start.js";
import { ExitCode } from "../../src/errors.js";
import { onCleanup } from "../helpers/cleanup.js";

const PENDING_RESULT = JSON.stringify({ jobId: "job-1", attempt: 1, outcome: "succeeded" });

async function seedOutbox(runner: RegisteredRunner): Promise<string> {
  const file = path.join(runner.stateDir, "outbox", "job-1.1.json");
  await fs.writeFile(file, PENDING_RESULT, { mode: 0o600 });
  return file;
}

async function assertOutboxIntact(runner: RegisteredRunner): Promise<void> {
  const outbox = path.join(runner.stateDir, "outbox");
  assert.deepEqual(await fs.readdir(outbox), ["job-1.1.json"], "the outbox holds exactly what it held");
  assert.equal(await fs.readFile(path.join(outbox, "job-1.1.json"), "utf8"), PENDING_RESULT);
}

async function setUp(t: TestContext, store: "file" | "keychain" = "file") {
  const plane = await startTestControlPlane(t);
  const runner = await registerRunner(t, plane, { store });
  await seedOutbox(runner);
  const before = await runCli(["verify", ...runner.flags]);
  assert.equal(before.code, ExitCode.OK, `freshly registered runner verifies: ${before.all}`);
  return { plane, runner };
}

async function expectVerifyReports(runner: RegisteredRunner, code: string, extraFlags: string[] = []) {
  const verify = await runCli(["verify", ...runner.flags, ...extraFlags]);
  assert.equal(verify.code, ExitCode.UNHEALTHY, verify.all);
  assert.match(verify.stdout, new RegExp(`\\[${code}\\]`), verify.all);
  return verify;
}

async function expectHealthy(runner: RegisteredRunner, extraFlags: string[] = []) {
  const verify = await runCli(["verify", ...runner.flags, ...extraFlags]);
  assert.equal(verify.code, ExitCode.OK, verify.all);
  await assertOutboxIntact(runner);
}

/** A rebuilt registration takes the control plane's registration time, a few ms from the local one. */
function withoutTimestamp(json: string): Record<string, unknown> {
  const { registeredAt, ...rest } = JSON.parse(json) as Record<string, unknown>;
  assert.equal(typeof registeredAt, "string");
  return rest;
}

async function runnerId(runner: RegisteredRunner): Promise<string> {
  return (
    JSON.parse(await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8")) as { runnerId: string }
  ).runnerId;
}

async function expectRefusalThenTokenRepair(plane: TestControlPlane, runner: RegisteredRunner) {
  const refused = await runCli(["repair", ...runner.flags]);
  assert.equal(refused.code, ExitCode.NEEDS_OPERATOR, refused.all);
  assert.match(refused.stdout, /run: runner repair --token-file <file with a new registration token>/);
  await assertOutboxIntact(runner);

  const oldId = await runnerId(runner);
  const tokenFile = await plane.tokenFile(path.dirname(runner.stateDir));
  const repaired = await runCli(["repair", "--token-file", tokenFile, ...runner.flags]);
  assert.equal(repaired.code, ExitCode.OK, repaired.all);
  assert.match(repaired.stdout, /done: registered again as rnr_/);
  assert.notEqual(await runnerId(runner), oldId, "a new runner id was issued");
  await expectHealthy(runner);
}

/**
 * Each case runs five to ten real CLI processes, one after the other; on a loaded 2-core
 * machine (four CPU hogs beside the suite) a case took up to 65 s. Every case has its own budget, so the suite's length never
 * decides whether a case passes.
 */
const CASE = { timeout: 240_000 };

/** Measured under four CPU hogs on 2 cores: up to ~10 s per CLI call; the default 30 s is too close. */
const runCli = (args: string[]) => runCliWithin(args, { timeoutMs: 90_000 });

/** `runner start` takes the lock, passes its checks and connects; SIGTERM drains it to exit 0. */
async function expectStartWorks(t: TestContext, runner: RegisteredRunner) {
  const daemon = startDaemon(t, runner.flags);
  await daemon.waitForLog((l) => l.msg === "connected to the control plane", 60_000);
  assert.equal(await daemon.stop(), 0, daemon.stderr());
}

/** A file outside the state dir (mode 0644), and a check that nothing ever changed it. */
async function outsideFile(t: TestContext, content: string) {
  const file = path.join(await tempDir(t, "runner-outside-"), "outside.json");
  await fs.writeFile(file, content, { mode: 0o644 });
  await fs.chmod(file, 0o644);
  return {
    file,
    async assertUntouched() {
      assert.equal(await fs.readFile(file, "utf8"), content, "the link's target keeps its content");
      assert.equal((await fs.stat(file)).mode & 0o777, 0o644, "the link's target keeps its mode");
      assert.deepEqual(await fs.readdir(path.dirname(file)), ["outside.json"], "nothing was created beside the target");
    },
  };
}

/** The one entry `name` was moved aside to (kept, never deleted). */
async function keptAside(dir: string, name: string): Promise<string> {
  const kept = (await fs.readdir(dir)).filter((f) => f.startsWith(`${name}.corrupt-`));
  assert.equal(kept.length, 1, `${name} was moved aside once: ${kept.join(", ")}`);
  return path.join(dir, kept[0]!);
}

/** Whether this process may make a dir read-only for itself: root, on Linux, with `unshare -m` working. */
async function readOnlyMountsWork(t: TestContext): Promise<boolean> {
  if (process.platform !== "linux" || process.getuid?.() !== 0) return false;
  const probe = await runCliWithin(["--version"], { readOnlyDir: await tempDir(t), timeoutMs: 90_000 }).catch(
    () => null,
  );
  return probe?.code === 0;
}

describe("repair matrix", () => {
  test(
    "a state dir or work dir on a read-only mount is reported with no automatic fix; repair and start exit 78",
    CASE,
    async (t) => {
      // Root writes through any mode bits; a read-only bind mount is what stops root too (EROFS).
      if (!(await readOnlyMountsWork(t)))
        return t.skip(
          "needs root on Linux with unshare(1), to mount the dir read-only in a namespace of the test's own",
        );
      const { runner } = await setUp(t);
      const inReadOnly = (dir: string, args: string[], env: Record<string, string> = {}) =>
        runCliWithin(args, { readOnlyDir: dir, env, timeoutMs: 90_000 });

      const verify = await inReadOnly(runner.stateDir, ["verify", ...runner.flags]);
      assert.equal(verify.code, ExitCode.UNHEALTHY, verify.all);
      assert.match(
        verify.stdout,
        /the state dir .* cannot be written: EROFS \(the file system is read-only\).*\[state_dir_unwritable\]/,
      );
      assert.match(verify.stdout, /none that `runner repair` fixes by itself/);
      const json = await inReadOnly(runner.stateDir, ["verify", "--json", ...runner.flags]);
      const report = JSON.parse(json.stdout) as { findings: { code: string; fix: { kind: string } }[] };
      assert.deepEqual(
        report.findings.map((f) => [f.code, f.fix.kind]),
        [["state_dir_unwritable", "operator"]],
        "one finding for the mount, not one per dir in it",
      );
      const repair = await inReadOnly(runner.stateDir, ["repair", ...runner.flags]);
      assert.equal(repair.code, ExitCode.NEEDS_OPERATOR, repair.all);
      const start = await inReadOnly(runner.stateDir, ["start", ...runner.flags]);
      assert.equal(start.code, ExitCode.NEEDS_OPERATOR, start.all);
      assert.match(start.stderr, /cannot write the lock .*: EROFS/);

      const workDir = await tempDir(t, "runner-work-");
      const verifyWork = await inReadOnly(workDir, ["verify", ...runner.flags, "--work-dir", workDir]);
      assert.equal(verifyWork.code, ExitCode.UNHEALTHY, verifyWork.all);
      assert.match(verifyWork.stdout, /the work dir .* cannot be written: EROFS .*\[work_dir_unwritable\]/);
      // The same dir named by the environment (as a config file would): every source of the setting counts.
      const viaEnv = await inReadOnly(workDir, ["verify", ...runner.flags], { RUNNER_WORK_DIR: workDir });
      assert.equal(viaEnv.code, ExitCode.UNHEALTHY, viaEnv.all);
      const startWork = await inReadOnly(workDir, ["start", ...runner.flags, "--work-dir", workDir]);
      assert.equal(startWork.code, ExitCode.NEEDS_OPERATOR, `not a runner whose every job fails: ${startWork.all}`);
      assert.match(startWork.stderr, /work_dir_unwritable/);

      // A full file system is not a dir the runner cannot write: the low-disk guard waits it out.
      const full = await runCliWithin(["verify", ...runner.flags, "--work-dir", workDir], {
        fullDir: workDir,
        timeoutMs: 90_000,
      });
      assert.equal(full.code, ExitCode.OK, `no inode left is no finding: ${full.all}`);

      // The probes left nothing behind; outside the namespace the same dirs are writable and healthy.
      assert.deepEqual(
        (await fs.readdir(workDir)).filter((name) => name.startsWith(".")),
        [],
        "no probe file is left in the work dir",
      );
      await fs.rm(path.join(runner.stateDir, "needs-operator"), { force: true });
      await expectHealthy(runner);
    },
  );

  test(
    "a state dir without write permission for the runner's user is reported, and start exits 78",
    CASE,
    async (t) => {
      // Mode bits bind only a user who is not root: as root, run the CLI as uid 65534 on its own state dir.
      const nobody = 65534;
      const asRoot = process.getuid?.() === 0;
      const as = asRoot ? { uid: nobody, env: { HOME: "/" }, timeoutMs: 90_000 } : { timeoutMs: 90_000 };
      if (asRoot && (await runCliWithin(["--version"], as).catch(() => null))?.code !== 0)
        return t.skip("the checkout is not readable by uid 65534");
      const { runner } = await setUp(t);
      if (asRoot) {
        await fs.chmod(path.dirname(runner.stateDir), 0o755);
        for (const entry of ["", "registration.json", "credential", "outbox", "outbox/job-1.1.json"])
          await fs.chown(path.join(runner.stateDir, entry), nobody, nobody);
      }
      await fs.chmod(runner.stateDir, 0o500);
      onCleanup(t, () => fs.chmod(runner.stateDir, 0o700));

      const verify = await runCliWithin(["verify", ...runner.flags], as);
      assert.equal(verify.code, ExitCode.UNHEALTHY, verify.all);
      assert.match(
        verify.stdout,
        /the state dir .* cannot be written: EACCES \(permission denied\).*\[state_dir_unwritable\]/,
      );
      const start = await runCliWithin(["start", ...runner.flags], as);
      assert.equal(start.code, ExitCode.NEEDS_OPERATOR, start.all);
      assert.match(start.stderr, /cannot write the lock .*: EACCES/);

      await fs.chmod(runner.stateDir, 0o700);
      const fixed = await runCliWithin(["verify", ...runner.flags], as);
      assert.equal(fixed.code, ExitCode.OK, fixed.all);
    },
  );

  test("a truncated registration.json is set aside, kept, and rebuilt from the credential store", CASE, async (t) => {
    const { runner } = await setUp(t);
    const file = path.join(runner.stateDir, "registration.json");
    const original = await fs.readFile(file, "utf8");
    await fs.writeFile(file, original.slice(0, original.length / 2));

    const verify = await expectVerifyReports(runner, "registration_invalid");
    assert.match(verify.stdout, /not valid JSON.*truncated/);

    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    assert.match(repair.stdout, /moved the bad file to .*registration\.json\.corrupt-/);
    assert.match(repair.stdout, /rebuilt registration\.json for runner rnr_/);
    const kept = (await fs.readdir(runner.stateDir)).filter((f) => f.startsWith("registration.json.corrupt-"));
    assert.equal(kept.length, 1, "the bad file is kept");
    assert.equal(
      await fs.readFile(path.join(runner.stateDir, kept[0]!), "utf8"),
      original.slice(0, original.length / 2),
    );
    assert.deepEqual(
      withoutTimestamp(await fs.readFile(file, "utf8")),
      withoutTimestamp(original),
      "rebuilt with the same identity",
    );
    await expectHealthy(runner);
  });

  test("a registration.json of the wrong shape is reported with the field at fault", CASE, async (t) => {
    const { runner } = await setUp(t);
    const file = path.join(runner.stateDir, "registration.json");
    await fs.writeFile(file, JSON.stringify({ ...JSON.parse(await fs.readFile(file, "utf8")), runnerId: 42 }));
    const verify = await expectVerifyReports(runner, "registration_invalid");
    assert.match(verify.stdout, /runnerId/);
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    await expectHealthy(runner);
  });

  test("loose permissions on the state dir and the secret files are tightened", CASE, async (t) => {
    const { runner } = await setUp(t);
    await fs.chmod(runner.stateDir, 0o755);
    await fs.chmod(path.join(runner.stateDir, "credential"), 0o644);
    await fs.chmod(path.join(runner.stateDir, "registration.json"), 0o664);
    const verify = await expectVerifyReports(runner, "state_dir_permissions");
    assert.equal(verify.stdout.match(/\[file_permissions\]/g)?.length, 2, verify.stdout);

    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    assert.equal((await fs.stat(runner.stateDir)).mode & 0o777, 0o700);
    assert.equal((await fs.stat(path.join(runner.stateDir, "credential"))).mode & 0o777, 0o600);
    assert.equal((await fs.stat(path.join(runner.stateDir, "registration.json"))).mode & 0o777, 0o600);
    await expectHealthy(runner);
  });

  test("a lock left by a dead process is stale and removed", CASE, async (t) => {
    const { runner } = await setUp(t);
    const child = spawn(process.execPath, ["-e", "0"]);
    const pid = child.pid!;
    await new Promise((r) => child.on("exit", r));
    await fs.writeFile(
      path.join(runner.stateDir, "runner.lock"),
      JSON.stringify({ pid, startTime: "1", hostname: "h", acquiredAt: "2026-01-01T00:00:00Z" }),
    );

    const verify = await expectVerifyReports(runner, "stale_lock");
    assert.match(verify.stdout, new RegExp(`pid ${pid}, is not running`));
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    assert.match(repair.stdout, /took over a stale lock/);
    await assert.rejects(fs.stat(path.join(runner.stateDir, "runner.lock")), { code: "ENOENT" });
    await expectHealthy(runner);
  });

  test("a lock naming a pid that now belongs to another process is stale", CASE, async (t) => {
    const { runner } = await setUp(t);
    const startTime = await processStartTime(process.pid);
    assert.ok(startTime, "this platform exposes process start times");
    const lock = {
      pid: process.pid,
      startTime: String(Number(startTime) - 1),
      hostname: "h",
      acquiredAt: "2026-01-01T00:00:00Z",
    };
    await fs.writeFile(path.join(runner.stateDir, "runner.lock"), JSON.stringify(lock));
    const verify = await expectVerifyReports(runner, "stale_lock");
    assert.match(verify.stdout, /now belongs to another process/);
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    await expectHealthy(runner);
  });

  test(
    "a credential deleted from the keychain is reported as missing from the keychain, not silently re-registered",
    CASE,
    async (t) => {
      if (!requireKeychain(t)) return;
      const { plane, runner } = await setUp(t, "keychain");
      assert.equal(
        await new KeychainCredentialStore(runner.stateDir).remove(),
        true,
        "the entry existed in the real keychain",
      );

      const verify = await expectVerifyReports(runner, "credential_missing");
      assert.match(verify.stdout, /credential missing from keychain/);
      await expectRefusalThenTokenRepair(plane, runner);
      const stored = await new KeychainCredentialStore(runner.stateDir).read();
      assert.equal(stored.kind, "ok", "the new credential is back in the keychain");
    },
  );

  test("a credential revoked on the control plane needs a new registration token", CASE, async (t) => {
    const { plane, runner } = await setUp(t);
    await plane.admin.revokeRunner(await runnerId(runner));
    await expectVerifyReports(runner, "credential_revoked");
    await expectRefusalThenTokenRepair(plane, runner);
  });

  test("a runner deleted on the control plane is re-registered with its name and labels", CASE, async (t) => {
    const { plane, runner } = await setUp(t);
    const before = JSON.parse(await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8")) as {
      name: string;
    };
    await plane.admin.deleteRunner(await runnerId(runner));
    await expectVerifyReports(runner, "runner_deleted");
    await expectRefusalThenTokenRepair(plane, runner);
    const listed = await plane.admin.listRunners();
    assert.deepEqual(
      listed.map((r) => r.name),
      [before.name],
      "exactly one runner, with the old name",
    );
  });

  test("a changed host fingerprint is re-bound on the control plane", CASE, async (t) => {
    const { plane, runner } = await setUp(t);
    const moved = ["--machine-id", "machine-B"];
    await expectVerifyReports(runner, "host_changed", moved);
    const repair = await runCli(["repair", ...runner.flags, ...moved]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    assert.match(repair.stdout, /re-bound runner rnr_/);
    await expectHealthy(runner, moved);
    const [record] = await plane.admin.listRunners();
    const registration = JSON.parse(await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8")) as {
      hostFingerprint: string;
    };
    assert.equal(record?.host.fingerprint, registration.hostFingerprint, "both sides agree on the new fingerprint");
  });

  test(
    "a missing state dir is recreated; with the credential gone too, repair names the register command",
    CASE,
    async (t) => {
      const { runner } = await setUp(t);
      await fs.rm(runner.stateDir, { recursive: true });
      await expectVerifyReports(runner, "state_dir_missing");
      const repair = await runCli(["repair", ...runner.flags]);
      assert.equal(repair.code, ExitCode.NEEDS_OPERATOR, repair.all);
      assert.match(repair.stdout, /done: created .*state and its outbox/);
      assert.match(repair.stdout, /run: runner register --url <control plane URL> --token-file <file>/);
      assert.equal((await fs.stat(runner.stateDir)).mode & 0o777, 0o700);
      assert.deepEqual(await fs.readdir(path.join(runner.stateDir, "outbox")), []);
    },
  );

  test("a missing state dir is fully rebuilt when the keychain still holds the credential", CASE, async (t) => {
    if (!requireKeychain(t)) return;
    const { runner } = await setUp(t, "keychain");
    const registration = await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8");
    await fs.rm(runner.stateDir, { recursive: true });
    await expectVerifyReports(runner, "state_dir_missing");
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    assert.match(repair.stdout, /rebuilt registration\.json .* from the keychain store/);
    const rebuilt = await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8");
    assert.deepEqual(withoutTimestamp(rebuilt), withoutTimestamp(registration));
    assert.equal((await runCli(["verify", ...runner.flags])).code, ExitCode.OK);
  });

  test("a missing outbox is recreated", CASE, async (t) => {
    const { runner } = await setUp(t);
    await fs.rm(path.join(runner.stateDir, "outbox"), { recursive: true });
    await expectVerifyReports(runner, "outbox_missing");
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    assert.equal((await fs.stat(path.join(runner.stateDir, "outbox"))).mode & 0o777, 0o700);
  });

  test("repair --dry-run changes nothing", CASE, async (t) => {
    const { runner } = await setUp(t);
    await fs.chmod(runner.stateDir, 0o755);
    const dry = await runCli(["repair", "--dry-run", ...runner.flags]);
    assert.equal(dry.code, ExitCode.UNHEALTHY, dry.all);
    assert.match(dry.stdout, /dry run: nothing was changed/);
    assert.equal((await fs.stat(runner.stateDir)).mode & 0o777, 0o755);
  });

  test(
    "a link at registration.json to a file outside is moved aside unfollowed; the outside file keeps its content and mode",
    CASE,
    async (t) => {
      const { runner } = await setUp(t);
      const file = path.join(runner.stateDir, "registration.json");
      const original = await fs.readFile(file, "utf8");
      const outside = await outsideFile(t, original);
      await fs.rm(file);
      await fs.symlink(outside.file, file);

      const verify = await expectVerifyReports(runner, "foreign_file_type");
      assert.match(
        verify.stdout,
        new RegExp(`registration\\.json is a symbolic link to ${outside.file.replace(/[.]/g, "\\.")}`),
      );
      assert.doesNotMatch(verify.stdout, /file_permissions/, "the link's target is not judged (nor chmodded)");

      const repair = await runCli(["repair", ...runner.flags]);
      assert.equal(repair.code, ExitCode.OK, repair.all);
      assert.match(repair.stdout, /moved the symlink to .*registration\.json\.corrupt-/);
      assert.match(repair.stdout, /rebuilt registration\.json for runner rnr_/);
      assert.equal(
        (await fs.lstat(await keptAside(runner.stateDir, "registration.json"))).isSymbolicLink(),
        true,
        "the link itself is kept",
      );
      assert.equal((await fs.lstat(file)).isFile(), true);
      assert.deepEqual(withoutTimestamp(await fs.readFile(file, "utf8")), withoutTimestamp(original));
      await outside.assertUntouched();
      await expectHealthy(runner);
      await expectStartWorks(t, runner);
      await outside.assertUntouched();
    },
  );

  test(
    "a dangling link at runner.lock is reported, moved aside by repair without creating its target, and start then works",
    CASE,
    async (t) => {
      const { runner } = await setUp(t);
      const target = path.join(await tempDir(t, "runner-outside-"), "never-created");
      await fs.symlink(target, path.join(runner.stateDir, "runner.lock"));

      const verify = await expectVerifyReports(runner, "foreign_file_type");
      assert.match(verify.stdout, /runner\.lock is a symbolic link to .*never-created/);
      assert.doesNotMatch(verify.stdout, /stale_lock/);
      const repair = await runCli(["repair", ...runner.flags]);
      assert.equal(repair.code, ExitCode.OK, repair.all);
      assert.match(
        repair.stdout,
        /took over a stale lock \(.*runner\.lock was a symlink, not a lock file; moved aside to .*runner\.lock\.corrupt-/,
      );
      assert.equal((await fs.lstat(await keptAside(runner.stateDir, "runner.lock"))).isSymbolicLink(), true);
      await assert.rejects(fs.lstat(target), { code: "ENOENT" }, "the link's target was never created");
      await expectHealthy(runner);
      await expectStartWorks(t, runner);
    },
  );

  test("start itself moves a link or a directory at runner.lock aside instead of exiting 4", CASE, async (t) => {
    const { runner } = await setUp(t);
    const lock = path.join(runner.stateDir, "runner.lock");
    await fs.mkdir(lock);
    await fs.writeFile(path.join(lock, "inside"), "kept");
    await expectStartWorks(t, runner);
    const kept = await keptAside(runner.stateDir, "runner.lock");
    assert.equal(
      await fs.readFile(path.join(kept, "inside"), "utf8"),
      "kept",
      "the directory is kept with its content",
    );
    // (start has consumed the seeded outbox, so only the verdict is checked here)
    assert.equal((await runCli(["verify", ...runner.flags])).code, ExitCode.OK);
  });

  test("a directory at registration.json is moved aside and the registration rebuilt", CASE, async (t) => {
    const { runner } = await setUp(t);
    const file = path.join(runner.stateDir, "registration.json");
    await fs.rm(file);
    await fs.mkdir(file);
    const verify = await expectVerifyReports(runner, "foreign_file_type");
    assert.match(verify.stdout, /registration\.json is a directory where a regular file belongs/);
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    assert.equal((await fs.lstat(await keptAside(runner.stateDir, "registration.json"))).isDirectory(), true);
    assert.equal((await fs.lstat(file)).isFile(), true);
    await expectHealthy(runner);
  });

  test(
    "a link at credential to a file outside is moved aside; the runner then needs a token, and the outside file is untouched",
    CASE,
    async (t) => {
      const { plane, runner } = await setUp(t);
      const file = path.join(runner.stateDir, "credential");
      const outside = await outsideFile(t, await fs.readFile(file, "utf8"));
      await fs.rm(file);
      await fs.symlink(outside.file, file);

      const verify = await expectVerifyReports(runner, "foreign_file_type");
      assert.match(verify.stdout, /credential is a symbolic link to /);
      assert.doesNotMatch(verify.stdout, /file_permissions/);
      // A credential that lives outside the state dir is not this runner's: it is not used.
      await expectRefusalThenTokenRepair(plane, runner);
      assert.equal((await fs.lstat(await keptAside(runner.stateDir, "credential"))).isSymbolicLink(), true);
      await outside.assertUntouched();
      await expectStartWorks(t, runner);
    },
  );

  test(
    "a link at outbox/ to a directory outside is moved aside and a real outbox created; nothing outside changes",
    CASE,
    async (t) => {
      const { runner } = await setUp(t);
      const outbox = path.join(runner.stateDir, "outbox");
      const outside = await outsideFile(t, PENDING_RESULT);
      await fs.rm(outbox, { recursive: true });
      await fs.symlink(path.dirname(outside.file), outbox);

      await expectVerifyReports(runner, "foreign_file_type");
      const repair = await runCli(["repair", ...runner.flags]);
      assert.equal(repair.code, ExitCode.OK, repair.all);
      assert.match(repair.stdout, /created .*outbox \(0700\)/);
      assert.equal((await fs.lstat(await keptAside(runner.stateDir, "outbox"))).isSymbolicLink(), true);
      const real = await fs.lstat(outbox);
      assert.equal(real.isDirectory() && (real.mode & 0o777) === 0o700, true, "a real, private outbox");
      assert.equal((await runCli(["verify", ...runner.flags])).code, ExitCode.OK);
      await expectStartWorks(t, runner);
      await outside.assertUntouched();
    },
  );

  test("a link inside outbox/ and a fifo at devices.json are moved aside; the real results stay", CASE, async (t) => {
    const { runner } = await setUp(t);
    const outside = await outsideFile(t, JSON.stringify({ jobId: "job-2", attempt: 1, outcome: "succeeded" }));
    const inOutbox = path.join(runner.stateDir, "outbox", "job-2.1.json");
    await fs.symlink(outside.file, inOutbox);
    spawnSync("mkfifo", [path.join(runner.stateDir, "devices.json")]);

    const verify = await expectVerifyReports(runner, "foreign_file_type");
    assert.match(verify.stdout, /outbox\/job-2\.1\.json is a symbolic link/);
    assert.match(verify.stdout, /devices\.json is a fifo/);
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    await keptAside(path.join(runner.stateDir, "outbox"), "job-2.1.json");
    await keptAside(runner.stateDir, "devices.json");
    await fs.rm(await keptAside(path.join(runner.stateDir, "outbox"), "job-2.1.json"));
    await expectHealthy(runner);
    await outside.assertUntouched();
  });
});
