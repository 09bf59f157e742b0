// Service units rendered from the real templates: what goes where, what the manager is told,
// and that every argument reaches the daemon exactly as given (systemd quoting, plist XML).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import * as plist from "plist";
import { NO_RESTART_EXITS } from "../../src/errors.js";
import { LAUNCHD_MARKER_ENV } from "../../src/state/blocked.js";
import { REPO_ROOT } from "../helpers/cli.js";
import {
  fill,
  LAUNCHCTL,
  planService,
  quoteSystemdArg,
  readStartState,
  type ServiceInputs,
} from "../../src/service/render.js";

const templates = {
  systemd: readFileSync(path.join(REPO_ROOT, "systemd", "runner.service"), "utf8"),
  launchd: readFileSync(path.join(REPO_ROOT, "launchd", "runner.plist"), "utf8"),
};
const TRICKY = `/srv/my runner/a&b<c>"d"$HOME%h\\x`;

function inputs(overrides: Partial<ServiceInputs> = {}): ServiceInputs {
  return {
    platform: "linux",
    home: "/home/alice",
    uid: 1000,
    user: "alice",
    env: {},
    name: "runner",
    system: false,
    runAs: "alice",
    argv: ["/usr/bin/node", "/opt/runner/bin/runner.js", "start", "--state-dir", TRICKY],
    stateDir: "/home/alice/.local/state/runner",
    workDir: "/home/alice/.local/state/runner/work",
    hardened: false,
    drainTimeoutMs: 600_000,
    templates,
    ...overrides,
  };
}

function unitValue(content: string, key: string): string[] {
  return content
    .split("\n")
    .filter((line) => line.startsWith(`${key}=`))
    .map((line) => line.slice(key.length + 1));
}

describe("systemd units", () => {
  test("a per-user unit goes to the user's systemd dir, starts at boot via lingering, and is driven with --user", () => {
    const plan = planService(inputs({ env: { XDG_CONFIG_HOME: "/home/alice/.cfg" } }));
    assert.equal(plan.unitFile, "/home/alice/.cfg/systemd/user/runner.service");
    assert.deepEqual(plan.load, [
      ["systemctl", "--user", "daemon-reload"],
      ["systemctl", "--user", "enable", "--now", "runner.service"],
    ]);
    assert.deepEqual(plan.afterLoad, [["loginctl", "enable-linger", "alice"]]);
    assert.deepEqual(unitValue(plan.content, "WantedBy"), ["default.target"]);
    assert.deepEqual(unitValue(plan.content, "User"), []);
  });

  test("exits that a restart cannot fix are not restarted, and a stop waits out the drain and the longest cancel grace", () => {
    const { content } = planService(inputs({ drainTimeoutMs: 120_500 }));
    assert.deepEqual(unitValue(content, "RestartPreventExitStatus"), ["2 4 78 79"]);
    assert.deepEqual(NO_RESTART_EXITS, [2, 4, 78, 79]);
    assert.deepEqual(unitValue(content, "Restart"), ["on-failure"]);
    assert.deepEqual(unitValue(content, "KillMode"), ["mixed"], "SIGTERM to the daemon alone, so it drains");
    assert.deepEqual(
      unitValue(content, "TimeoutStopSec"),
      ["751"],
      "121 s of drain, then 600 s for the jobs cancelled at the drain deadline, plus the 30 s margin",
    );
    assert.doesNotMatch(content, /\{\{[A-Z_]+\}\}/, "every placeholder is filled");
  });

  test("the unit names the journal's identifier, keeps its files private and lifts the 1024 fd limit", () => {
    const { content } = planService(inputs({ name: "ci-7" }));
    assert.deepEqual(unitValue(content, "Type"), ["exec"]);
    assert.deepEqual(unitValue(content, "SyslogIdentifier"), ["ci-7"]);
    assert.deepEqual(unitValue(content, "UMask"), ["0077"]);
    assert.deepEqual(unitValue(content, "LimitNOFILE"), ["65536"]);
    assert.deepEqual(unitValue(content, "WorkingDirectory"), [inputs().stateDir], "the daemon's own dir, not /");
    const odd = planService(inputs({ stateDir: "/srv/50%/runner state" })).content;
    assert.deepEqual(unitValue(odd, "WorkingDirectory"), ["/srv/50%%/runner state"], "a specifier is escaped");
  });

  test("every ExecStart argument is quoted with systemd's expansions turned off", () => {
    const { content } = planService(inputs());
    const [execStart] = unitValue(content, "ExecStart");
    assert.equal(
      execStart,
      `"/usr/bin/node" "/opt/runner/bin/runner.js" "start" "--state-dir" "/srv/my runner/a&b<c>\\"d\\"$$HOME%%h\\\\x"`,
    );
    assert.throws(() => quoteSystemdArg("two\nlines"), { code: "usage", message: /line break/ });
  });

  test("the installer's PATH goes into the unit, quoted, with specifiers escaped and $ left alone", () => {
    const { content } = planService(inputs({ env: { PATH: "/opt/my tools/bin:/x%y:/usr/bin$" } }));
    assert.deepEqual(unitValue(content, "Environment"), [`"PATH=/opt/my tools/bin:/x%%y:/usr/bin$"`]);
    const parsed = plist.parse(
      planService(inputs({ platform: "darwin", env: { PATH: "/opt/homebrew/bin:/usr/bin" } })).content,
    ) as Record<string, unknown>;
    assert.equal((parsed.EnvironmentVariables as Record<string, string>).PATH, "/opt/homebrew/bin:/usr/bin");
  });

  test("a machine-wide unit goes to /etc/systemd/system and runs as the chosen user, not root", () => {
    const plan = planService(inputs({ system: true, runAs: "ci", name: "gpu-runner" }));
    assert.equal(plan.unitFile, "/etc/systemd/system/gpu-runner.service");
    assert.deepEqual(unitValue(plan.content, "User"), ["ci"]);
    assert.deepEqual(unitValue(plan.content, "WantedBy"), ["multi-user.target"]);
    assert.deepEqual(plan.load[1], ["systemctl", "enable", "--now", "gpu-runner.service"]);
    assert.deepEqual(plan.afterLoad, []);
    assert.deepEqual(unitValue(planService(inputs({ system: true, runAs: "root" })).content, "User"), []);
  });
});

describe("launchd plists", () => {
  test("a LaunchAgent parses as a plist whose arguments are exactly the given argv", () => {
    const plan = planService(inputs({ platform: "darwin", home: "/Users/alice", stateDir: "/Users/alice/state" }));
    assert.equal(plan.unitFile, "/Users/alice/Library/LaunchAgents/dev.runner.runner.plist");
    const parsed = plist.parse(plan.content) as Record<string, unknown>;
    assert.equal(parsed.Label, "dev.runner.runner");
    assert.deepEqual(parsed.ProgramArguments, inputs().argv);
    assert.equal(parsed.RunAtLoad, true);
    assert.equal(parsed.UserName, undefined);
    assert.equal(parsed.ExitTimeOut, 1230, "600 s of drain, 600 s of the longest cancel grace, a 30 s margin");
    assert.deepEqual(parsed.SoftResourceLimits, { NumberOfFiles: 10240 });
    assert.equal(parsed.WorkingDirectory, "/Users/alice/state");
    assert.equal(parsed.Umask, 0o077);
    assert.equal(parsed.ThrottleInterval, undefined, "launchd's default, not repeated");
    assert.equal(parsed.ProcessType, undefined, "launchd's default, not repeated");
    assert.equal(parsed.StandardErrorPath, "/Users/alice/Library/Logs/runner/runner.log");
    assert.deepEqual(plan.dirs, ["/Users/alice/Library/Logs/runner"]);
    assert.equal(
      (parsed.EnvironmentVariables as Record<string, string>).RUNNER_LAUNCHD_LOG,
      "/Users/alice/Library/Logs/runner/runner.log",
      "the runner is told which file to cap",
    );
    assert.deepEqual(plan.logs, { file: "/Users/alice/Library/Logs/runner/runner.log" });
  });

  test("launchd keeps the job alive only while the needs-operator marker is absent", () => {
    const parsed = plist.parse(
      planService(inputs({ platform: "darwin", stateDir: "/Users/alice/state" })).content,
    ) as Record<string, unknown>;
    assert.deepEqual(parsed.KeepAlive, { PathState: { "/Users/alice/state/needs-operator": false } });
    assert.deepEqual(
      parsed.EnvironmentVariables,
      {
        PATH: "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        [LAUNCHD_MARKER_ENV]: "/Users/alice/state/needs-operator",
        RUNNER_LAUNCHD_LOG: "/home/alice/Library/Logs/runner/runner.log",
      },
      "the runner is told where the marker goes, so that it can leave it on any exit a restart cannot fix",
    );
  });

  test("a LaunchAgent loads into the user's gui domain; a LaunchDaemon into system, as its user", () => {
    const agent = planService(inputs({ platform: "darwin", uid: 501 }));
    assert.deepEqual(agent.load, [
      [LAUNCHCTL, "enable", "gui/501/dev.runner.runner"],
      [LAUNCHCTL, "bootstrap", "gui/501", agent.unitFile],
    ]);
    const daemon = planService(inputs({ platform: "darwin", system: true, runAs: "ci" }));
    assert.equal(daemon.unitFile, "/Library/LaunchDaemons/dev.runner.runner.plist");
    assert.deepEqual(daemon.load[1], [LAUNCHCTL, "bootstrap", "system", daemon.unitFile]);
    assert.equal((plist.parse(daemon.content) as Record<string, unknown>).UserName, "ci");
  });
});

describe("service plans", () => {
  test("a bad service name and an unsupported platform are refused with a reason", () => {
    assert.throws(() => planService(inputs({ name: "../etc" })), { code: "usage", message: /service name/ });
    assert.throws(() => planService(inputs({ platform: "win32" })), {
      code: "usage",
      message: /under your own supervisor/,
    });
  });

  test("a template placeholder without a value is an error, not an empty string", () => {
    assert.equal(fill("a {{X}} b", { X: "1" }), "a 1 b");
    assert.throws(() => fill("a {{Y}} b", {}), { code: "internal", message: /\{\{Y\}\} has no value/ });
  });
});

describe("what install waits for", () => {
  const systemd = (output: string) => readStartState("systemd", { code: 0, output });
  const launchd = (output: string, code = 0) => readStartState("launchd", { code, output });

  test("systemd: active and running is running; activating is starting; auto-restart, failed and inactive have stopped", () => {
    assert.deepEqual(systemd("ActiveState=active\nSubState=running\nExecMainStatus=0\n"), { kind: "running" });
    assert.deepEqual(systemd("ActiveState=activating\nSubState=start\nExecMainStatus=0\n"), { kind: "starting" });
    assert.deepEqual(systemd("ActiveState=activating\nSubState=auto-restart\nExecMainStatus=1\n"), {
      kind: "stopped",
      exitCode: 1,
      detail: "activating (auto-restart)",
    });
    assert.deepEqual(systemd("ActiveState=failed\nSubState=failed\nExecMainStatus=78\n"), {
      kind: "stopped",
      exitCode: 78,
      detail: "failed (failed)",
    });
    assert.equal(systemd("ActiveState=inactive\nSubState=dead\n").kind, "stopped");
    assert.deepEqual(systemd(""), { kind: "starting" }, "no answer yet is no verdict");
  });

  test("launchd: a job that has exited since its bootstrap has stopped, whatever its state now", () => {
    const job = (fields: string[]) => ["system/dev.runner.runner = {", ...fields.map((f) => `\t${f}`), "}"].join("\n");
    assert.deepEqual(launchd(job(["state = running", "pid = 42", "runs = 1", "last exit code = (never exited)"])), {
      kind: "running",
    });
    assert.deepEqual(launchd(job(["state = spawn scheduled", "runs = 1"])), { kind: "starting" });
    assert.deepEqual(launchd(job(["state = running", "pid = 43", "runs = 2", "last exit code = 1"])), {
      kind: "stopped",
      exitCode: 1,
      detail: "state running, runs 2",
    });
    assert.equal(launchd("Could not find service", 113).kind, "stopped");
  });

  test("the unit's last log lines come from the journal (systemd) or the plist's log file (launchd)", () => {
    assert.deepEqual(planService(inputs({ system: true, runAs: "ci" })).logs, {
      command: ["journalctl", "-u", "runner.service", "-n", "20", "--no-pager"],
    });
    assert.deepEqual(planService(inputs()).logs, {
      command: ["journalctl", "--user", "-u", "runner.service", "-n", "20", "--no-pager"],
    });
  });
});
