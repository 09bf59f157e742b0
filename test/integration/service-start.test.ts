// `runner service install` end to end: systemctl and journalctl are stub programs on PATH, but
// the stub's `enable --now` really starts the unit's ExecStart (as the unit's User=, through
// runuser, in its WorkingDirectory, with only its PATH), so the daemon that install waits for
// is a real one, reading the state dir the install prepared and connecting to a reference
// control plane on loopback. The machine-wide test needs root (it creates a throw-away user).
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { runCli, RUNNER_BIN } from "../helpers/cli.js";
import { startTestControlPlane, tempDir, type TestControlPlane } from "../helpers/fixtures.js";
import { ExitCode } from "../../src/errors.js";
import type { JobView } from "../../src/protocol/http.js";
import { onCleanup } from "../helpers/cleanup.js";

const execFileAsync = promisify(execFile);

interface ManagerStub {
  dir: string;
  calls(): Promise<string[]>;
  /** What the started unit wrote to stdout and stderr. */
  serviceLog(): Promise<string>;
  /** The started unit's exit code, once it has exited. */
  exitCode(): Promise<number | null>;
}

/**
 * systemctl and journalctl stubs. `enable --now <unit>` starts the unit file's ExecStart in the
 * background as systemd would (User=, WorkingDirectory=, Environment=PATH, nothing else from
 * the installer's environment); `show`/`is-active` say whether it still runs; `stop` and `disable --now`
 * sends SIGTERM to the runner named in the state dir's lock and waits for it to exit;
 * journalctl prints the end of its output.
 */
async function managerStub(t: TestContext): Promise<ManagerStub> {
  const dir = await tempDir(t, "runner-stubs-");
  const systemctl = `#!/bin/sh
S='${dir}'
echo "systemctl $*" >> "$S/calls.log"
if [ "$1" = "--user" ]; then shift; units="$XDG_CONFIG_HOME/systemd/user"; else units=/etc/systemd/system; fi
cmd="$1"; shift
state() {
  if [ -f "$S/exit" ]; then echo "ActiveState=failed"; echo "SubState=failed"; echo "ExecMainStatus=$(cat "$S/exit")"
  elif [ -f "$S/started" ]; then echo "ActiveState=active"; echo "SubState=running"
  else echo "ActiveState=inactive"; echo "SubState=dead"; fi
}
case "$cmd" in
  enable)
    [ "$1" = "--now" ] || exit 0
    file="$units/$2"
    rm -f "$S/exit"; touch "$S/started"
    exec_start=$(sed -n 's/^ExecStart=//p' "$file")
    user=$(sed -n 's/^User=//p' "$file")
    dir=$(sed -n 's/^WorkingDirectory=//p' "$file")
    path=$(sed -n 's/^Environment="PATH=\\(.*\\)"$/\\1/p' "$file")
    eval "set -- $exec_start"
    prev=""; for arg in "$@"; do [ "$prev" = "--state-dir" ] && echo "$arg" > "$S/state-dir"; prev="$arg"; done
    set -- sh -c 'cd "$0" || exit 200; exec "$@"' "$dir" "$@"
    if [ -n "$user" ]; then set -- /usr/sbin/runuser -u "$user" -- "$@"; fi
    ( env -i PATH="$path" "$@" >> "$S/service.log" 2>&1; echo $? > "$S/exit.tmp"; mv "$S/exit.tmp" "$S/exit" ) </dev/null >/dev/null 2>&1 &
    ;;
  stop|disable)
    [ "$cmd" = disable ] && [ "$1" != "--now" ] && exit 0
    [ -f "$S/started" ] || exit 0
    pid=$(sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p' "$(cat "$S/state-dir")/runner.lock" 2>/dev/null)
    [ -n "$pid" ] && kill -TERM "$pid"
    n=0; while [ ! -f "$S/exit" ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n + 1)); done
    rm -f "$S/started" ;;
  show) state ;;
  is-active) state | sed -n 's/^ActiveState=//p'; [ -f "$S/started" ] && [ ! -f "$S/exit" ] ;;
  is-enabled) echo enabled ;;
esac
exit 0
`;
  await fs.writeFile(path.join(dir, "systemctl"), systemctl, { mode: 0o755 });
  await fs.writeFile(
    path.join(dir, "journalctl"),
    `#!/bin/sh\necho "journalctl $*" >> '${dir}/calls.log'\ntail -n 20 '${dir}/service.log'\n`,
    { mode: 0o755 },
  );
  await fs.writeFile(path.join(dir, "loginctl"), `#!/bin/sh\necho "loginctl $*" >> '${dir}/calls.log'\n`, {
    mode: 0o755,
  });
  const read = (name: string) => fs.readFile(path.join(dir, name), "utf8").catch(() => "");
  return {
    dir,
    calls: async () => (await read("calls.log")).split("\n").filter((line) => line.length > 0),
    serviceLog: () => read("service.log"),
    exitCode: async () => {
      const text = (await read("exit")).trim();
      return text === "" ? null : Number(text);
    },
  };
}

const finished = (job: JobView) => ["succeeded", "failed", "cancelled", "timed_out"].includes(job.status);

/** Polls the job until it is over; gives up early, with the service's output, if the service exits. */
async function waitForJob(plane: TestControlPlane, jobId: string, stub: ManagerStub): Promise<JobView> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const { job } = await plane.admin.getJob(jobId);
    if (finished(job)) return job;
    const exit = await stub.exitCode();
    if (exit !== null) assert.fail(`the service exited (${exit}) before the job ran:\n${await stub.serviceLog()}`);
    if (Date.now() > deadline) assert.fail(`job ${jobId} did not finish:\n${await stub.serviceLog()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Root only: a system user of its own, removed afterwards. Null (the test skipped) when not root. */
async function throwAwayUser(t: TestContext): Promise<string | null> {
  if (process.getuid?.() !== 0) {
    if (process.env.CI === "true")
      assert.fail("CI must run this test as root: it installs a machine-wide unit and runs it as another user");
    t.skip("needs root: it creates a system user and runs the service as that user with runuser");
    return null;
  }
  const name = `rn-e2e-${process.pid}`;
  await execFileAsync("useradd", [
    "--system",
    "--no-create-home",
    "--shell",
    "/usr/sbin/nologin",
    "--user-group",
    name,
  ]);
  onCleanup(t, () => execFileAsync("userdel", [name]).then(() => undefined));
  return name;
}

/** Registers a runner (as the user running the test) with its state dir in `root`; returns the flags every call needs. */
async function registerIn(
  plane: TestControlPlane,
  root: string,
  options: { system: boolean },
): Promise<{ stateDir: string; flags: string[] }> {
  const stateDir = path.join(root, "state");
  // The store and the host's id in a config file (which every verb reads, and the unit is given) rather than flags.
  const config = path.join(root, "config.json");
  await fs.writeFile(config, JSON.stringify({ credentialStore: "file", machineId: "machine-A" }), { mode: 0o644 });
  const flags = [...(options.system ? ["--system"] : []), "--config", config, "--state-dir", stateDir];
  const tokenFile = await plane.tokenFile(root);
  const register = await runCli(["register", "--url", plane.cp.url, "--token-file", tokenFile, ...flags]);
  assert.equal(register.code, ExitCode.OK, register.all);
  return { stateDir, flags };
}

/** A dir others may pass through (as /var/lib is): a service user must reach the state dir in it. */
async function reachableDir(t: TestContext): Promise<string> {
  const dir = await tempDir(t, "runner-e2e-");
  await fs.chmod(dir, 0o755);
  return dir;
}

describe("service install starts the runner and waits for it", () => {
  test(
    "a machine-wide install registered by root runs as a non-root service user that reads its state, connects and runs a job",
    { timeout: 120_000 },
    async (t) => {
      const user = await throwAwayUser(t);
      if (user === null) return;
      const plane = await startTestControlPlane(t);
      const root = await reachableDir(t);
      const { stateDir, flags } = await registerIn(plane, root, { system: true });

      const stub = await managerStub(t);
      const name = `runner-e2e-${process.pid}`;
      const unitFile = path.join("/etc/systemd/system", `${name}.service`);
      onCleanup(t, () => fs.rm(unitFile, { force: true }));
      const env = { PATH: `${stub.dir}:/usr/bin:/bin` };
      const install = await runCli(
        ["service", "install", ...flags, "--run-as", user, "--name", name, "--device-providers", "none"],
        { env, timeoutMs: 60_000 },
      );
      onCleanup(t, async () => {
        await runCli(["service", "uninstall", ...flags, "--name", name], { env, timeoutMs: 60_000 });
      });
      assert.equal(install.code, ExitCode.OK, `${install.all}\n--- service output:\n${await stub.serviceLog()}`);
      assert.match(install.stdout, /running: it passed its start-up checks/);
      assert.match(
        (await fs.readFile(unitFile, "utf8")).split("\n").find((l) => l.startsWith("User="))!,
        /User=rn-e2e/,
      );

      const { job } = await plane.admin.submitJob({ job: { kind: "command", argv: ["id", "-un"], env: {} } });
      const done = await waitForJob(plane, job.jobId, stub);
      assert.equal(done.status, "succeeded", JSON.stringify(done));
      const { logs } = await plane.admin.getJob(job.jobId);
      assert.equal(logs.map((l) => l.data).join(""), `${user}\n`, "the job ran as the service user");

      // Both root and the service user find the state healthy (no file of root's left in it).
      const asRoot = await runCli(["verify", ...flags]);
      assert.equal(asRoot.code, ExitCode.OK, asRoot.all);
      const { stdout: owner } = await execFileAsync("stat", ["-c", "%U %a", stateDir]);
      assert.equal(owner.trim(), `${user} 700`);

      const uninstall = await runCli(["service", "uninstall", ...flags, "--name", name], { env, timeoutMs: 60_000 });
      assert.equal(uninstall.code, ExitCode.OK, uninstall.all);
      assert.equal(await stub.exitCode(), ExitCode.OK, await stub.serviceLog());
    },
  );

  test(
    "install fails, showing the unit's last log lines, when the runner stops during its start-up checks",
    { timeout: 120_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const root = await tempDir(t);
      const { flags } = await registerIn(plane, root, { system: false });
      const [record] = await plane.admin.listRunners();
      await plane.admin.revokeRunner(record!.runnerId);

      const stub = await managerStub(t);
      const home = await tempDir(t, "runner-home-");
      const env = { HOME: home, XDG_CONFIG_HOME: path.join(home, ".config"), PATH: `${stub.dir}:/usr/bin:/bin` };
      const install = await runCli(["service", "install", ...flags, "--device-providers", "none"], {
        env,
        timeoutMs: 60_000,
      });
      assert.equal(install.code, ExitCode.INTERNAL, install.all);
      assert.match(install.stderr, /runner\.service stopped during its start-up checks \(exit 78\)/);
      assert.match(install.stderr, /credential_revoked/, "the unit's last log lines are shown");
      assert.ok((await stub.calls()).includes("journalctl --user -u runner.service -n 20 --no-pager"));
      await fs.access(path.join(home, ".config", "systemd", "user", "runner.service")); // kept, to fix and restart
    },
  );

  test(
    "a state dir root made is reported to its service user, stops its start with 78, and repair as root gives it over",
    { timeout: 120_000 },
    async (t) => {
      const user = await throwAwayUser(t);
      if (user === null) return;
      const plane = await startTestControlPlane(t);
      const root = await reachableDir(t);
      const { stateDir, flags } = await registerIn(plane, root, { system: false });
      /** The CLI run as the service user, in its own environment (no HOME or keyring of root's). */
      const asUser = (args: string[]) =>
        new Promise<{ code: number; stdout: string; all: string }>((resolve) =>
          execFile(
            "/usr/sbin/runuser",
            ["-u", user, "--", process.execPath, RUNNER_BIN, ...args],
            { env: { PATH: "/usr/bin:/bin", RUNNER_LOG_FORMAT: "json" }, timeout: 30_000, cwd: "/" },
            (error, stdout, stderr) =>
              resolve({ code: error === null ? 0 : Number(error.code), stdout, all: stdout + stderr }),
          ),
        );

      const verify = await asUser(["verify", ...flags]);
      assert.equal(verify.code, ExitCode.UNHEALTHY, verify.all);
      assert.match(
        verify.stdout,
        /the state dir .* belongs to root, not rn-e2e-\d+ \(who runs this\).*\[state_dir_owner\]/,
      );
      assert.ok(verify.stdout.includes(`sudo runner repair --state-dir ${stateDir} --owner ${user}`), verify.stdout);
      const start = await asUser(["start", ...flags]);
      assert.equal(start.code, ExitCode.NEEDS_OPERATOR, `not a restart loop: ${start.all}`);

      const repair = await runCli(["repair", ...flags, "--owner", user]);
      assert.equal(repair.code, ExitCode.OK, repair.all);
      assert.match(repair.stdout, new RegExp(`gave ${stateDir}/registration.json to ${user}`));
      assert.equal((await asUser(["verify", ...flags])).code, ExitCode.OK);

      // Root replaces a file in the user's state dir (as `register --replace` run by root would).
      await fs.chown(path.join(stateDir, "registration.json"), 0, 0);
      const found = await asUser(["verify", ...flags]);
      assert.equal(found.code, ExitCode.UNHEALTHY, found.all);
      assert.match(found.stdout, /registration\.json belongs to root, not rn-e2e-\d+ .*\[file_owner\]/);
      const asRoot = await runCli(["verify", ...flags]);
      assert.match(
        asRoot.stdout,
        /registration\.json belongs to root, not rn-e2e-\d+ \(the state dir's owner\).*\[file_owner\]/,
      );
      const fixed = await runCli(["repair", ...flags]);
      assert.equal(fixed.code, ExitCode.OK, fixed.all);
      const after = await asUser(["verify", ...flags]);
      assert.equal(after.code, ExitCode.OK, after.all);
    },
  );
});
