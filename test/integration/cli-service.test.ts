// `runner service` for real, with the service managers' commands (systemctl, loginctl,
// launchctl) replaced by stub programs on PATH that record their arguments: no systemd or
// launchd runs here. The units it writes are linted with `systemd-analyze verify`.
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import * as plist from "plist";
import { runCli, REPO_ROOT } from "../helpers/cli.js";
import { registerRunner, requireKeychain, startTestControlPlane, tempDir } from "../helpers/fixtures.js";
import { KeychainCredentialStore } from "../../src/credentials/keychain-store.js";
import { LAUNCHD_MARKER_ENV } from "../../src/state/blocked.js";
import { acquireLock } from "../../src/state/lock.js";
import { startDaemon } from "../helpers/daemon.js";
import { ExitCode } from "../../src/errors.js";
import { planService, type ServicePlan } from "../../src/service/render.js";
import {
  inspectService,
  installService,
  runCommand,
  uninstallService,
  waitUntilServing,
  type RunCommand,
} from "../../src/service/manager.js";
import { onCleanup } from "../helpers/cleanup.js";

const execFileAsync = promisify(execFile);

interface Stubs {
  dir: string;
  /** Every call of every stub so far, one "program arg arg..." per line. */
  calls(): Promise<string[]>;
}

/** Stub programs that log their argv and print `answers[program]` (exit `exits[program]`). */
async function stubCommands(
  t: TestContext,
  programs: string[],
  behaviour: { answers?: Record<string, string>; exits?: Record<string, number> } = {},
): Promise<Stubs> {
  const dir = await tempDir(t, "runner-stubs-");
  const log = path.join(dir, "calls.log");
  for (const program of programs) {
    const script = `#!/bin/sh\necho "${program} $*" >> "${log}"\n${behaviour.answers?.[program] ? `echo "${behaviour.answers[program]}" >&2\n` : ""}exit ${behaviour.exits?.[program] ?? 0}\n`;
    await fs.writeFile(path.join(dir, program), script, { mode: 0o755 });
  }
  return {
    dir,
    calls: async () => (await fs.readFile(log, "utf8").catch(() => "")).split("\n").filter((line) => line.length > 0),
  };
}

/** A home of its own, and PATH with only the stubs and the basics (no real systemctl). */
async function serviceEnv(t: TestContext, stubs: Stubs): Promise<{ home: string; env: Record<string, string> }> {
  const home = await tempDir(t, "runner-home-");
  return { home, env: { HOME: home, XDG_CONFIG_HOME: path.join(home, ".config"), PATH: `${stubs.dir}:/usr/bin:/bin` } };
}

/** A runner registered with its credential in the real Secret Service, and stubbed service managers. */
async function keychainRunner(t: TestContext) {
  const plane = await startTestControlPlane(t);
  const runner = await registerRunner(t, plane, { store: "keychain" });
  onCleanup(t, () => new KeychainCredentialStore(runner.stateDir).remove().catch(() => undefined));
  const stubs = await stubCommands(t, ["systemctl", "loginctl"]);
  const { env } = await serviceEnv(t, stubs);
  return { runner, flags: runner.flags, stubs, env };
}

/** What `systemd-analyze verify` prints about a unit: nothing, for a clean one. */
async function lintUnit(file: string): Promise<string> {
  const { stdout, stderr, code } = await execFileAsync("systemd-analyze", ["verify", file]).then(
    (result) => ({ ...result, code: 0 as number | string }),
    (error: { stdout?: string; stderr?: string; code: number | string }) => ({
      stdout: error.stdout ?? "",
      stderr: error.stderr ?? "",
      code: error.code,
    }),
  );
  if (code === "ENOENT") assert.fail("systemd-analyze is not installed (Debian package systemd; .ci/run installs it)");
  return `${stdout}${stderr}`.trim() + (code === 0 ? "" : ` (exit ${code})`);
}

describe("runner service (systemd, stubbed)", () => {
  test(
    "install writes a per-user unit that lints clean, reloads, enables and starts it, and asks to linger",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const stubs = await stubCommands(t, ["systemctl", "loginctl"]);
      const { home, env } = await serviceEnv(t, stubs);
      // No --config here (runner.flags has one): without a config file the unit must not require one.
      const install = await runCli(
        [
          "service",
          "install",
          "--state-dir",
          runner.stateDir,
          "--machine-id",
          "machine-A",
          "--capacity",
          "3",
          "--no-wait",
        ],
        { env: { ...env, RUNNER_DEVICE_BATCH_SIZE: "50", RUNNER_CREDENTIAL_STORE: "file" } },
      );
      assert.equal(install.code, ExitCode.OK, install.all);

      const unitFile = path.join(home, ".config", "systemd", "user", "runner.service");
      const unit = await fs.readFile(unitFile, "utf8");
      const execStart = unit.split("\n").find((line) => line.startsWith("ExecStart="))!;
      assert.ok(
        execStart.includes(`"${process.execPath}" "${path.join(REPO_ROOT, "bin", "runner.js")}" "start"`),
        execStart,
      );
      assert.ok(execStart.includes(`"--state-dir" "${runner.stateDir}"`), "the same state dir");
      assert.ok(
        execStart.includes(`"--capacity" "3"`) && execStart.includes(`"--device-batch-size" "50"`),
        "the daemon's settings given to install, by flag or environment, are carried",
      );
      assert.ok(
        !execStart.includes("--credential-store"),
        "a setting start does not use stays behind: start refuses its flag",
      );
      assert.ok(!execStart.includes("--config"), "no config file exists, so none is required of the service");
      assert.ok(unit.includes(`Environment="PATH=${env.PATH}"`), "the installer's PATH");
      assert.equal(await lintUnit(unitFile), "", "systemd-analyze verify prints nothing for the unit");
      assert.deepEqual(await stubs.calls(), [
        "systemctl --user stop runner.service",
        "systemctl --user daemon-reload",
        "systemctl --user enable --now runner.service",
        `loginctl enable-linger ${os.userInfo().username}`,
      ]);

      const uninstall = await runCli(["service", "uninstall", ...runner.flags], { env });
      assert.equal(uninstall.code, ExitCode.OK, uninstall.all);
      await assert.rejects(fs.stat(unitFile), { code: "ENOENT" });
      assert.deepEqual((await stubs.calls()).slice(4), [
        "systemctl --user disable --now runner.service",
        "systemctl --user daemon-reload",
      ]);
      await fs.access(path.join(runner.stateDir, "registration.json")); // the runner itself is kept
    },
  );

  test(
    "install carries a relative --work-dir as the absolute dir it names here, not one under the unit's state dir",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const stubs = await stubCommands(t, ["systemctl", "loginctl"]);
      const { home, env } = await serviceEnv(t, stubs);
      const here = await tempDir(t, "runner-cwd-");
      const install = await runCli(
        ["service", "install", "--state-dir", runner.stateDir, "--work-dir", "jobs", "--no-start", "--hardened"],
        { env, cwd: here },
      );
      assert.equal(install.code, ExitCode.OK, install.all);
      const unit = await fs.readFile(path.join(home, ".config", "systemd", "user", "runner.service"), "utf8");
      const execStart = unit.split("\n").find((line) => line.startsWith("ExecStart="))!;
      // The unit runs in its state dir (WorkingDirectory=), where "jobs" would be another dir.
      assert.ok(execStart.includes(`"--work-dir" "${path.join(here, "jobs")}"`), execStart);
      assert.match(unit, new RegExp(`^ReadWritePaths=.* -${path.join(here, "jobs")}$`, "m"));
    },
  );

  test(
    "install warns that a keychain credential is locked at boot, and --credential-to-file moves it to the file first",
    { timeout: 60_000 },
    async (t) => {
      if (!requireKeychain(t)) return;
      const { runner, flags, env } = await keychainRunner(t);

      const warned = await runCli(["service", "install", ...flags, "--no-start"], { env });
      assert.equal(warned.code, ExitCode.OK, warned.all);
      assert.match(
        warned.stdout,
        /Secret Service keyring, which stays locked until you log in.*runner credentials move --to file/,
      );

      const moved = await runCli(["service", "install", ...flags, "--no-start", "--credential-to-file"], { env });
      assert.equal(moved.code, ExitCode.OK, moved.all);
      assert.match(moved.stdout, /moved the credential from the keychain store to the file store/);
      assert.doesNotMatch(moved.stdout, /stays locked/);
      const registration = JSON.parse(await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8")) as {
        credentialStore: string;
      };
      assert.equal(registration.credentialStore, "file");
    },
  );

  test(
    "a machine-wide install refuses a keychain credential before it writes or runs anything",
    { timeout: 60_000 },
    async (t) => {
      if (!requireKeychain(t)) return;
      const { flags, stubs, env } = await keychainRunner(t);
      const name = `runner-test-${process.pid}`;
      const unitFile = path.join("/etc/systemd/system", `${name}.service`);
      onCleanup(t, () => fs.rm(unitFile, { force: true }));
      const install = await runCli(["service", "install", ...flags, "--system", "--run-as", "nobody", "--name", name], {
        env,
      });
      assert.equal(install.code, ExitCode.USAGE, install.all);
      assert.match(install.stderr, /machine-wide service cannot read at boot[\s\S]*runner credentials move --to file/);
      await assert.rejects(fs.access(unitFile), { code: "ENOENT" });
      assert.deepEqual(await stubs.calls(), []);
    },
  );

  test(
    "status reports the unit, the manager's answers, and a stop for a person, with exit 3 while stopped",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const stubs = await stubCommands(t, ["systemctl", "loginctl"], { answers: { systemctl: "active" } });
      const { home, env } = await serviceEnv(t, stubs);
      const configFile = path.join(home, ".config", "runner", "config.json");
      await fs.mkdir(path.dirname(configFile), { recursive: true });
      await fs.writeFile(configFile, JSON.stringify({ capacity: 2 }));
      // Without --config (runner.flags has one), so that install reads the default config file.
      assert.equal(
        (await runCli(["service", "install", "--state-dir", runner.stateDir, "--no-wait"], { env })).code,
        ExitCode.OK,
      );
      const unit = await fs.readFile(path.join(home, ".config", "systemd", "user", "runner.service"), "utf8");
      assert.ok(unit.includes(`"--config" "${configFile}"`), "the config file the install read is the service's");
      const healthy = await runCli(["service", "status", ...runner.flags], { env });
      assert.equal(healthy.code, ExitCode.OK, healthy.all);
      assert.match(healthy.stdout, /\(installed\)/);
      assert.match(healthy.stdout, /systemctl --user is-active runner.service: active/);

      const [record] = await plane.admin.listRunners();
      await plane.admin.revokeRunner(record!.runnerId);
      assert.equal((await runCli(["start", ...runner.flags])).code, ExitCode.NEEDS_OPERATOR);
      const stopped = await runCli(["service", "status", ...runner.flags], { env });
      assert.equal(stopped.code, ExitCode.UNHEALTHY, stopped.all);
      assert.match(stopped.stdout, /stopped for a person since .*: exit 78, start-up checks: credential_revoked/);
    },
  );

  test(
    "a service manager that refuses leaves no unit behind and says what failed and what to do",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const stubs = await stubCommands(t, ["systemctl"], {
        answers: { systemctl: "Failed to connect to bus: No medium found" },
        exits: { systemctl: 1 },
      });
      const { home, env } = await serviceEnv(t, stubs);
      const install = await runCli(["service", "install", ...runner.flags], { env });
      assert.equal(install.code, ExitCode.INTERNAL, install.all);
      assert.match(
        install.stderr,
        /`systemctl --user daemon-reload` failed \(exit 1: Failed to connect to bus: No medium found\)/,
      );
      assert.match(install.stderr, /sudo runner service install --system/);
      await assert.rejects(fs.stat(path.join(home, ".config", "systemd", "user", "runner.service")), {
        code: "ENOENT",
      });
    },
  );

  test("without systemctl on PATH, install says this machine has no systemd", { timeout: 60_000 }, async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    const stubs = await stubCommands(t, ["loginctl"]);
    const { env } = await serviceEnv(t, stubs);
    const install = await runCli(["service", "install", ...runner.flags], { env: { ...env, PATH: stubs.dir } });
    assert.equal(install.code, ExitCode.INTERNAL, install.all);
    assert.match(install.stderr, /systemctl: not found on PATH/);
    assert.match(install.stderr, /run `runner start` under your own supervisor/);
  });

  test(
    "install refuses a state dir with no registration, naming the command to run first",
    { timeout: 60_000 },
    async (t) => {
      const stubs = await stubCommands(t, ["systemctl", "loginctl"]);
      const { home, env } = await serviceEnv(t, stubs);
      const install = await runCli(["service", "install", "--state-dir", path.join(home, "nothing-here")], { env });
      assert.equal(install.code, ExitCode.NEEDS_OPERATOR, install.all);
      assert.match(install.stderr, /no runner is registered in .*\n.*register first: runner register/);
      assert.deepEqual(await stubs.calls(), [], "the service manager is not touched");
    },
  );
});

describe("the --hardened profile", () => {
  /** A systemd unit planned for this machine's node and runner (machine-wide: as `daemon`). */
  async function hardenedPlan(
    t: TestContext,
    options: { system: boolean; hardened?: boolean; stateDir?: string; workDir?: string },
  ): Promise<ServicePlan> {
    const home = await tempDir(t, "runner-home-");
    const stateDir = options.stateDir ?? (options.system ? "/var/lib/runner" : path.join(home, ".local/state/runner"));
    return planService({
      platform: "linux",
      home,
      uid: 1000,
      user: "daemon",
      env: { PATH: "/usr/bin:/bin" },
      name: "runner",
      system: options.system,
      runAs: "daemon",
      argv: [process.execPath, path.join(REPO_ROOT, "bin", "runner.js"), "start", "--state-dir", stateDir],
      stateDir,
      workDir: options.workDir ?? (options.system ? "/srv/runner-work" : path.join(stateDir, "work")),
      hardened: options.hardened ?? true,
      drainTimeoutMs: 600_000,
      templates: {
        systemd: await fs.readFile(path.join(REPO_ROOT, "systemd", "runner.service"), "utf8"),
        launchd: await fs.readFile(path.join(REPO_ROOT, "launchd", "runner.plist"), "utf8"),
      },
    });
  }
  /** The unit written where systemd-analyze can read it. */
  async function hardenedUnit(t: TestContext, system: boolean, hardened = true): Promise<string> {
    const plan = await hardenedPlan(t, { system, hardened });
    const file = path.join(await tempDir(t), "runner.service");
    await fs.writeFile(file, plan.content);
    return file;
  }
  const values = (unit: string, key: string) =>
    unit
      .split("\n")
      .filter((line) => line.startsWith(`${key}=`))
      .map((line) => line.slice(key.length + 1));

  test(
    "a hardened machine-wide unit lints clean, hides the homes and leaves only the state and work dirs writable",
    { timeout: 60_000 },
    async (t) => {
      const file = await hardenedUnit(t, true);
      assert.equal(await lintUnit(file), "", "systemd-analyze verify prints nothing");
      const unit = await fs.readFile(file, "utf8");
      assert.deepEqual(values(unit, "ProtectSystem"), ["strict"]);
      assert.deepEqual(values(unit, "ProtectHome"), ["tmpfs"]);
      assert.deepEqual(values(unit, "ReadWritePaths"), ["/var/lib/runner -/srv/runner-work"]);
      for (const key of ["PrivateTmp", "NoNewPrivileges", "RestrictSUIDSGID", "LockPersonality"])
        assert.deepEqual(values(unit, key), ["yes"], key);
      assert.deepEqual(values(unit, "CapabilityBoundingSet"), [""]);
    },
  );

  test(
    "a hardened per-user unit lints clean, sandboxes in a user namespace and keeps the home read-only",
    { timeout: 60_000 },
    async (t) => {
      const file = await hardenedUnit(t, false);
      assert.equal(await lintUnit(file), "", "systemd-analyze verify prints nothing");
      const unit = await fs.readFile(file, "utf8");
      assert.deepEqual(values(unit, "PrivateUsers"), ["yes"]);
      assert.deepEqual(values(unit, "ProtectHome"), ["read-only"]);
      assert.equal(values(unit, "ReadWritePaths").length, 1, "the work dir is inside the state dir");
      assert.deepEqual(values(unit, "CapabilityBoundingSet"), [], "a user manager cannot drop capabilities");
    },
  );

  test(
    "systemd-analyze security rates the hardened machine-wide unit well below the default one",
    { timeout: 60_000 },
    async (t) => {
      const exposure = async (file: string) => {
        const { stdout } = await execFileAsync("systemd-analyze", ["security", "--offline=true", file]).catch(
          (error: { stdout?: string }) => ({ stdout: error.stdout ?? "" }),
        );
        const score = /Overall exposure level for .*: (\d+\.\d+)/.exec(stdout)?.[1];
        assert.ok(score !== undefined, stdout);
        return Number(score);
      };
      const plain = await exposure(await hardenedUnit(t, true, false));
      const hardened = await exposure(await hardenedUnit(t, true));
      t.diagnostic(`exposure: default ${plain}, hardened ${hardened}`);
      assert.ok(hardened <= plain - 4, `default ${plain}, hardened ${hardened}`);
    },
  );

  test(
    "a hardened machine-wide unit refuses a state dir under /home, which it would hide",
    { timeout: 60_000 },
    async (t) => {
      await assert.rejects(
        hardenedPlan(t, { system: true, stateDir: "/home/ci/runner", workDir: "/home/ci/runner/work" }),
        {
          code: "usage",
          message: /--hardened hides \/home, \/root, \/run\/user .* but \/home\/ci\/runner is there/,
        },
      );
    },
  );
});

describe("launchd install (stubbed launchctl)", () => {
  test(
    "writes a LaunchAgent that parses, then boots out any old copy, enables and bootstraps it in the gui domain",
    { timeout: 30_000 },
    async (t) => {
      const { stubs, plan, home, argv } = await launchdPlan(t, {}, (home) => [
        process.execPath,
        path.join(REPO_ROOT, "bin", "runner.js"),
        "start",
        "--state-dir",
        path.join(home, "state & more"),
      ]);
      const viaStubs = viaStubsOf(stubs);

      const lines = await installService(plan, viaStubs, { start: true });
      const parsed = plist.parse(await fs.readFile(plan.unitFile, "utf8")) as Record<string, unknown>;
      assert.deepEqual(parsed.ProgramArguments, argv);
      await fs.access(path.join(home, "Library", "Logs", "runner")); // launchd does not create the log's dir
      assert.deepEqual(await stubs.calls(), [
        "launchctl bootout gui/501/dev.runner.runner",
        "launchctl print gui/501/dev.runner.runner",
        "launchctl enable gui/501/dev.runner.runner",
        `launchctl bootstrap gui/501 ${plan.unitFile}`,
      ]);
      assert.ok(
        lines.some((line) => line.includes("bootstrap")),
        lines.join("\n"),
      );

      await uninstallService(plan, viaStubs);
      await assert.rejects(fs.stat(plan.unitFile), { code: "ENOENT" });
      assert.deepEqual((await stubs.calls()).slice(-2), [
        "launchctl bootout gui/501/dev.runner.runner",
        "launchctl print gui/501/dev.runner.runner",
      ]);
    },
  );

  test(
    "a reinstall waits until the old job is gone before it bootstraps (bootout returns while it drains)",
    { timeout: 30_000 },
    async (t) => {
      const { stubs, plan } = await launchdPlan(t, { stillLoadedFor: 3 });
      await installService(plan, viaStubsOf(stubs), { start: true }, FAST_WAIT);
      const calls = await stubs.calls();
      assert.deepEqual(calls, [
        "launchctl bootout gui/501/dev.runner.runner",
        ...Array(4).fill("launchctl print gui/501/dev.runner.runner"),
        "launchctl enable gui/501/dev.runner.runner",
        `launchctl bootstrap gui/501 ${plan.unitFile}`,
      ]);
    },
  );

  test(
    "a job that outlives its stop timeout stops install and uninstall, and its plist is kept as it was",
    { timeout: 30_000 },
    async (t) => {
      const { stubs, plan } = await launchdPlan(t, { stillLoadedFor: 1_000_000 });
      await fs.mkdir(path.dirname(plan.unitFile), { recursive: true });
      await fs.writeFile(plan.unitFile, "the old plist");
      const quick = { ...plan, stopTimeoutMs: 100 };
      await assert.rejects(installService(quick, viaStubsOf(stubs), { start: true }, FAST_WAIT), {
        code: "service_failed",
        message: /still stopping .*drains its running jobs/,
      });
      await assert.rejects(uninstallService(quick, viaStubsOf(stubs), FAST_WAIT), { code: "service_failed" });
      assert.equal(await fs.readFile(plan.unitFile, "utf8"), "the old plist");
      assert.ok(!(await stubs.calls()).some((call) => call.includes("bootstrap")), "nothing was bootstrapped");
    },
  );

  test(
    "a bootstrap that fails while the old job still runs keeps the plist that job came from",
    { timeout: 30_000 },
    async (t) => {
      const { stubs, plan } = await launchdPlan(t, { stillLoadedFor: 1, bootstrapExit: 5, loadedAfterBootstrap: true });
      await assert.rejects(installService(plan, viaStubsOf(stubs), { start: true }, FAST_WAIT), {
        code: "service_failed",
        message: /bootstrap .*exit 5/,
      });
      await fs.access(plan.unitFile);
    },
  );

  test(
    "install's wait fails with the log file's last lines when the job exits, and when it never reports serving",
    { timeout: 30_000 },
    async (t) => {
      const crashed = LAUNCHCTL_PRINT_CRASH_LOOP.replace("state = spawn scheduled", "state = running");
      const { stubs, plan } = await launchdPlan(t, { printOutput: crashed });
      const logFile = "file" in plan.logs ? plan.logs.file : assert.fail("a plist logs to a file");
      await fs.mkdir(path.dirname(logFile), { recursive: true });
      const lines = Array.from({ length: 30 }, (_, i) => `line ${i}`);
      await fs.writeFile(logFile, lines.join("\n") + "\n");
      const quick = { pollMs: 10, timeoutMs: 5_000 };
      await assert.rejects(
        waitUntilServing(plan, viaStubsOf(stubs), async () => true, quick),
        (error: Error) => {
          assert.match(error.message, /^dev\.runner\.runner stopped during its start-up checks \(exit 1\)/);
          assert.ok(
            error.message.endsWith(
              lines
                .slice(10)
                .map((line) => `  ${line}`)
                .join("\n"),
            ),
            error.message,
          );
          assert.doesNotMatch(error.message, /line 9\n/);
          return true;
        },
      );

      const running = await launchdPlan(t, { printOutput: LAUNCHCTL_PRINT_RUNNING });
      await assert.rejects(
        waitUntilServing(running.plan, viaStubsOf(running.stubs), async () => false, { pollMs: 10, timeoutMs: 50 }),
        /did not pass its start-up checks within 0 s \(the manager says: running\); its last log lines .*:\n {2}\(none\)/,
      );
      assert.equal(
        await waitUntilServing(running.plan, viaStubsOf(running.stubs), async () => true, quick),
        "✓ dev.runner.runner is running: it passed its start-up checks",
      );
    },
  );

  test(
    "status counts a loaded job as running only when launchctl print says state = running",
    { timeout: 30_000 },
    async (t) => {
      for (const [output, running] of [
        [LAUNCHCTL_PRINT_RUNNING, true],
        [LAUNCHCTL_PRINT_CRASH_LOOP, false],
      ] as const) {
        const { stubs, plan } = await launchdPlan(t, { printOutput: output });
        await fs.mkdir(path.dirname(plan.unitFile), { recursive: true });
        await fs.writeFile(plan.unitFile, plan.content);
        const state = await inspectService(plan, viaStubsOf(stubs));
        assert.equal(state.manager[0]?.code, 0, "launchctl print exits 0 either way");
        assert.equal(state.running, running, output.slice(0, 80));
      }
    },
  );
});

const FAST_WAIT = { pollMs: 10, marginMs: 0 };

/** `launchctl print` of a LaunchAgent that runs (trimmed from macOS 14's output). */
const LAUNCHCTL_PRINT_RUNNING = [
  "gui/501/dev.runner.runner = {",
  "\tactive count = 1",
  "\tpath = /Users/alice/Library/LaunchAgents/dev.runner.runner.plist",
  "\ttype = LaunchAgent",
  "\tstate = running",
  "",
  "\tprogram = /opt/homebrew/bin/node",
  "\targuments = {",
  "\t\t/opt/homebrew/bin/node",
  "\t\tstart",
  "\t}",
  "",
  "\truns = 1",
  "\tpid = 4242",
  "\tlast exit code = (never exited)",
  "",
  "\tendpoints = {",
  "\t\tstate = active",
  "\t}",
  "}",
].join("\n");

/** The same job crash-looping: still loaded, so `print` exits 0. */
const LAUNCHCTL_PRINT_CRASH_LOOP = [
  "gui/501/dev.runner.runner = {",
  "\tactive count = 0",
  "\tpath = /Users/alice/Library/LaunchAgents/dev.runner.runner.plist",
  "\ttype = LaunchAgent",
  "\tstate = spawn scheduled",
  "",
  "\tprogram = /opt/homebrew/bin/node",
  "\truns = 57",
  "\tlast exit code = 1",
  "\tspawn type = daemon (3)",
  "}",
].join("\n");

/** Stubs take the place of programs named by absolute path (LAUNCHCTL is /bin/launchctl). */
function viaStubsOf(stubs: Stubs): RunCommand {
  return (command, options) =>
    runCommand([path.join(stubs.dir, path.basename(command[0]!)), ...command.slice(1)], options);
}

interface LaunchctlBehaviour {
  stillLoadedFor?: number;
  bootstrapExit?: number;
  loadedAfterBootstrap?: boolean;
  printOutput?: string;
}

/** A LaunchAgent plan (running `argvFor(home)`), and launchctl stubbed as launchctlStub says. */
async function launchdPlan(
  t: TestContext,
  behaviour: LaunchctlBehaviour,
  argvFor: (home: string) => string[] = () => [process.execPath, path.join(REPO_ROOT, "bin", "runner.js"), "start"],
): Promise<{ stubs: Stubs; plan: ServicePlan; home: string; argv: string[] }> {
  const stubs = await launchctlStub(t, behaviour);
  const home = await tempDir(t, "runner-home-");
  const argv = argvFor(home);
  const plan = planService({
    platform: "darwin",
    home,
    uid: 501,
    user: "alice",
    env: {},
    name: "runner",
    system: false,
    runAs: "alice",
    argv,
    stateDir: path.join(home, "state"),
    workDir: path.join(home, "state", "work"),
    hardened: false,
    drainTimeoutMs: 60_000,
    templates: {
      systemd: await fs.readFile(path.join(REPO_ROOT, "systemd", "runner.service"), "utf8"),
      launchd: await fs.readFile(path.join(REPO_ROOT, "launchd", "runner.plist"), "utf8"),
    },
  });
  return { stubs, plan, home, argv };
}

describe("the needs-operator marker", () => {
  test(
    "start leaves it when a person must act; repair clears it once nothing is left for one",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const marker = path.join(runner.stateDir, "needs-operator");
      const [record] = await plane.admin.listRunners();
      await plane.admin.revokeRunner(record!.runnerId);
      assert.equal((await runCli(["start", ...runner.flags])).code, ExitCode.NEEDS_OPERATOR);
      assert.deepEqual(JSON.parse(await fs.readFile(marker, "utf8")).exitCode, ExitCode.NEEDS_OPERATOR);
      const status = await runCli(["status", ...runner.flags]);
      assert.match(status.stdout, /stopped for a person since .*: exit 78/, status.all);

      const stillRevoked = await runCli(["repair", ...runner.flags]);
      assert.equal(stillRevoked.code, ExitCode.NEEDS_OPERATOR, stillRevoked.all);
      await fs.access(marker); // nothing fixed, so it stays

      const tokenFile = await plane.tokenFile(await tempDir(t));
      const fixed = await runCli(["repair", ...runner.flags, "--token-file", tokenFile]);
      assert.equal(fixed.code, ExitCode.OK, fixed.all);
      assert.match(fixed.stdout, /removed the needs-operator marker/);
      await assert.rejects(fs.stat(marker), { code: "ENOENT" });
    },
  );

  test(
    "under launchd every exit a restart cannot fix leaves the marker where the plist says, thrown ones included",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const marker = path.join(await tempDir(t), "keep-alive-marker");
      const underLaunchd = { env: { [LAUNCHD_MARKER_ENV]: marker } };
      const exitsWith = async (args: string[], code: number) => {
        await fs.rm(marker, { force: true });
        const start = await runCli(["start", ...args], underLaunchd);
        assert.equal(start.code, code, start.all);
        assert.equal(JSON.parse(await fs.readFile(marker, "utf8")).exitCode, code, `exit ${code} left the marker`);
      };

      // 2, thrown while the settings are read (before the state dir is even known).
      await exitsWith([...runner.flags, "--capacity", "0"], ExitCode.USAGE);
      // 4, thrown while another runner holds the lock.
      const lock = await acquireLock(path.join(runner.stateDir, "runner.lock"));
      await exitsWith(runner.flags, ExitCode.ALREADY_RUNNING);
      await lock.release();
      // 78, from the start-up checks.
      const [record] = await plane.admin.listRunners();
      await plane.admin.revokeRunner(record!.runnerId);
      await exitsWith(runner.flags, ExitCode.NEEDS_OPERATOR);

      // Outside launchd a usage error is the shell's to see: no marker in the state dir.
      const plain = await runCli(["start", ...runner.flags, "--capacity", "0"]);
      assert.equal(plain.code, ExitCode.USAGE, plain.all);
      const inStateDir = path.join(runner.stateDir, "needs-operator");
      const left = JSON.parse(await fs.readFile(inStateDir, "utf8").catch(() => "null")) as { exitCode: number } | null;
      assert.notEqual(left?.exitCode, ExitCode.USAGE);
    },
  );

  test("a start that passes its checks clears a marker an earlier stop left", { timeout: 60_000 }, async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    const marker = path.join(runner.stateDir, "needs-operator");
    await fs.writeFile(marker, JSON.stringify({ exitCode: 78, reason: "earlier", at: new Date().toISOString() }));
    const daemon = startDaemon(t, runner.flags);
    await daemon.waitForLog((line) => line.msg === "connected to the control plane");
    await assert.rejects(fs.stat(marker), { code: "ENOENT" });
    assert.ok(
      daemon.lines.some((line) => line.msg === "removed the needs-operator marker an earlier stop left"),
      daemon.stderr(),
    );
    assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
  });
});

/**
 * A stateful launchctl stub: after each bootout, `print` says the job is loaded
 * `stillLoadedFor` more times (bootout is asynchronous), then exits 113 as launchctl does for a
 * job it does not know; before any bootout it prints `printOutput`.
 */
async function launchctlStub(t: TestContext, behaviour: LaunchctlBehaviour): Promise<Stubs> {
  const stubs = await stubCommands(t, []);
  const left = path.join(stubs.dir, "loaded-left");
  await fs.writeFile(path.join(stubs.dir, "print-output"), behaviour.printOutput ?? "");
  const script = [
    "#!/bin/sh",
    `echo "launchctl $*" >> "${path.join(stubs.dir, "calls.log")}"`,
    `case "$1" in`,
    `  bootout) echo ${behaviour.stillLoadedFor ?? 0} > "${left}" ;;`,
    `  bootstrap) ${behaviour.loadedAfterBootstrap ? `echo 1000000 > "${left}"; ` : ""}exit ${behaviour.bootstrapExit ?? 0} ;;`,
    `  print)`,
    `    if [ ! -f "${left}" ]; then cat "${path.join(stubs.dir, "print-output")}"; exit 0; fi`,
    `    n=$(cat "${left}"); if [ "$n" -gt 0 ]; then echo $((n - 1)) > "${left}"; exit 0; fi`,
    `    echo "Could not find service in domain for user gui: 501" >&2; exit 113 ;;`,
    `esac`,
    "exit 0",
    "",
  ].join("\n");
  await fs.writeFile(path.join(stubs.dir, "launchctl"), script, { mode: 0o755 });
  return stubs;
}
