// One real test per repair finding: each breaks a registered runner's state for real, shows
// that `runner verify` reports it, that `runner repair` fixes it (or refuses with the exact
// command to run), and that the outbox of unsent results survives untouched.
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { spawn } from "node:child_process";
import path from "node:path";
import { runCli } from "../helpers/cli.js";
import { registerRunner, requireKeychain, startTestControlPlane, type RegisteredRunner, type TestControlPlane } from "../helpers/fixtures.js";
import { KeychainCredentialStore } from "../../src/credentials/keychain-store.js";
import { processStartTime } from "../../src/state/lock.js";
import { ExitCode } from "../../src/errors.js";

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
  return (JSON.parse(await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8")) as { runnerId: string }).runnerId;
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

describe("repair matrix", { timeout: 120_000 }, () => {
  test("a truncated registration.json is set aside, kept, and rebuilt from the credential store", async (t) => {
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
    assert.equal(await fs.readFile(path.join(runner.stateDir, kept[0]!), "utf8"), original.slice(0, original.length / 2));
    assert.deepEqual(withoutTimestamp(await fs.readFile(file, "utf8")), withoutTimestamp(original), "rebuilt with the same identity");
    await expectHealthy(runner);
  });

  test("a registration.json of the wrong shape is reported with the field at fault", async (t) => {
    const { runner } = await setUp(t);
    const file = path.join(runner.stateDir, "registration.json");
    await fs.writeFile(file, JSON.stringify({ ...JSON.parse(await fs.readFile(file, "utf8")), runnerId: 42 }));
    const verify = await expectVerifyReports(runner, "registration_invalid");
    assert.match(verify.stdout, /runnerId/);
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    await expectHealthy(runner);
  });

  test("loose permissions on the state dir and the secret files are tightened", async (t) => {
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

  test("a lock left by a dead process is stale and removed", async (t) => {
    const { runner } = await setUp(t);
    const child = spawn(process.execPath, ["-e", "0"]);
    const pid = child.pid!;
    await new Promise((r) => child.on("exit", r));
    await fs.writeFile(path.join(runner.stateDir, "runner.lock"), JSON.stringify({ pid, startTime: "1", hostname: "h", acquiredAt: "2026-01-01T00:00:00Z" }));

    const verify = await expectVerifyReports(runner, "stale_lock");
    assert.match(verify.stdout, new RegExp(`pid ${pid}, is not running`));
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    assert.match(repair.stdout, /took over a stale lock/);
    await assert.rejects(fs.stat(path.join(runner.stateDir, "runner.lock")), { code: "ENOENT" });
    await expectHealthy(runner);
  });

  test("a lock naming a pid that now belongs to another process is stale", async (t) => {
    const { runner } = await setUp(t);
    const startTime = await processStartTime(process.pid);
    assert.ok(startTime, "this platform exposes process start times");
    const lock = { pid: process.pid, startTime: String(Number(startTime) - 1), hostname: "h", acquiredAt: "2026-01-01T00:00:00Z" };
    await fs.writeFile(path.join(runner.stateDir, "runner.lock"), JSON.stringify(lock));
    const verify = await expectVerifyReports(runner, "stale_lock");
    assert.match(verify.stdout, /now belongs to another process/);
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    await expectHealthy(runner);
  });

  test("a credential deleted from the keychain is reported as missing from the keychain, not silently re-registered", async (t) => {
    if (!requireKeychain(t)) return;
    const { plane, runner } = await setUp(t, "keychain");
    assert.equal(await new KeychainCredentialStore(runner.stateDir).remove(), true, "the entry existed in the real keychain");

    const verify = await expectVerifyReports(runner, "credential_missing");
    assert.match(verify.stdout, /credential missing from keychain/);
    await expectRefusalThenTokenRepair(plane, runner);
    const stored = await new KeychainCredentialStore(runner.stateDir).read();
    assert.equal(stored.kind, "ok", "the new credential is back in the keychain");
  });

  test("a credential revoked on the control plane needs a new registration token", async (t) => {
    const { plane, runner } = await setUp(t);
    await plane.admin.revokeRunner(await runnerId(runner));
    await expectVerifyReports(runner, "credential_revoked");
    await expectRefusalThenTokenRepair(plane, runner);
  });

  test("a runner deleted on the control plane is re-registered with its name and labels", async (t) => {
    const { plane, runner } = await setUp(t);
    const before = JSON.parse(await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8")) as { name: string };
    await plane.admin.deleteRunner(await runnerId(runner));
    await expectVerifyReports(runner, "runner_deleted");
    await expectRefusalThenTokenRepair(plane, runner);
    const listed = await plane.admin.listRunners();
    assert.deepEqual(listed.map((r) => r.name), [before.name], "exactly one runner, with the old name");
  });

  test("a changed host fingerprint is re-bound on the control plane", async (t) => {
    const { plane, runner } = await setUp(t);
    const moved = ["--machine-id", "machine-B"];
    await expectVerifyReports(runner, "host_changed", moved);
    const repair = await runCli(["repair", ...runner.flags, ...moved]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    assert.match(repair.stdout, /re-bound runner rnr_/);
    await expectHealthy(runner, moved);
    const [record] = await plane.admin.listRunners();
    const registration = JSON.parse(await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8")) as { hostFingerprint: string };
    assert.equal(record?.host.fingerprint, registration.hostFingerprint, "both sides agree on the new fingerprint");
  });

  test("a missing state dir is recreated; with the credential gone too, repair names the register command", async (t) => {
    const { runner } = await setUp(t);
    await fs.rm(runner.stateDir, { recursive: true });
    await expectVerifyReports(runner, "state_dir_missing");
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.NEEDS_OPERATOR, repair.all);
    assert.match(repair.stdout, /done: created .*state and its outbox/);
    assert.match(repair.stdout, /run: runner register --url <control plane URL> --token-file <file>/);
    assert.equal((await fs.stat(runner.stateDir)).mode & 0o777, 0o700);
    assert.deepEqual(await fs.readdir(path.join(runner.stateDir, "outbox")), []);
  });

  test("a missing state dir is fully rebuilt when the keychain still holds the credential", async (t) => {
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

  test("a missing outbox is recreated", async (t) => {
    const { runner } = await setUp(t);
    await fs.rm(path.join(runner.stateDir, "outbox"), { recursive: true });
    await expectVerifyReports(runner, "outbox_missing");
    const repair = await runCli(["repair", ...runner.flags]);
    assert.equal(repair.code, ExitCode.OK, repair.all);
    assert.equal((await fs.stat(path.join(runner.stateDir, "outbox"))).mode & 0o777, 0o700);
  });

  test("repair --dry-run changes nothing", async (t) => {
    const { runner } = await setUp(t);
    await fs.chmod(runner.stateDir, 0o755);
    const dry = await runCli(["repair", "--dry-run", ...runner.flags]);
    assert.equal(dry.code, ExitCode.UNHEALTHY, dry.all);
    assert.match(dry.stdout, /dry run: nothing was changed/);
    assert.equal((await fs.stat(runner.stateDir)).mode & 0o777, 0o755);
  });
});
