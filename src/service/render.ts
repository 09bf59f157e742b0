// What `runner service install` puts where, worked out without touching the machine: the
// service manager for the platform, the unit's path, the unit itself (rendered from the
// templates in systemd/ and launchd/), and the manager commands that load, unload and
// inspect it. Pure: the caller passes the platform, the home dir, the user and the templates.
import path from "node:path";
import { stateFiles } from "../config/paths.js";
import { NO_RESTART_EXITS, RunnerError } from "../errors.js";
import { MAX_CANCEL_GRACE_MS } from "../protocol/channel.js";

export type ServiceManager = "systemd" | "launchd";

export interface ServiceInputs {
  platform: NodeJS.Platform;
  home: string;
  uid: number;
  /** The user who installs (and, for a per-user service, runs) the runner. */
  user: string;
  env: Record<string, string | undefined>;
  /** The service's name: the systemd unit `<name>.service`, the launchd label `dev.runner.<name>`. */
  name: string;
  /** A machine-wide service (root installs it; it runs as `runAs`) instead of a per-user one. */
  system: boolean;
  /** For a machine-wide service: the user it runs as. */
  runAs: string;
  /** What the service runs: node, the runner's launcher, `start` and its flags. */
  argv: string[];
  /** The state dir the service uses (the needs-operator marker lives there). */
  stateDir: string;
  /** The jobs' work dir: with `hardened`, writable besides the state dir. */
  workDir: string;
  /** systemd only: the sandboxing profile (see hardeningLines). */
  hardened: boolean;
  /** The daemon's drain deadline: the manager waits this long plus a margin before killing. */
  drainTimeoutMs: number;
  templates: { systemd: string; launchd: string };
}

export interface ServicePlan {
  manager: ServiceManager;
  /** The unit name (systemd) or label (launchd), as the manager's commands name it. */
  unit: string;
  unitFile: string;
  content: string;
  /** Directories to create before the unit is written (launchd's log dir). */
  dirs: string[];
  /** Run in order by install; a failing one stops the install. */
  load: string[][];
  /** Run in order by install before `load`; their failures do not matter (nothing loaded yet). */
  unloadFirst: string[][];
  /** Run by install after `load`; a failure is a warning (e.g. lingering not allowed). */
  afterLoad: string[][];
  /** Run in order by uninstall, before the unit file is removed; failures do not matter. */
  unload: string[][];
  /** Run by uninstall after the file is gone. */
  afterRemove: string[][];
  /** Print the manager's view of the service. */
  inspect: string[][];
  /**
   * Exits 0 while the job is still loaded, for managers whose unload returns before the job
   * has stopped (launchd's bootout); null where unloading waits for the stop itself.
   */
  loaded: string[] | null;
  /** The longest a stop can take: the manager's own timeout for it (TimeoutStopSec, ExitTimeOut). */
  stopTimeoutMs: number;
  /** Asked while install waits for the runner to start: its answer goes to readStartState. */
  probe: string[];
  /** Where the service's last log lines are: a command that prints them, or the log file. */
  logs: { command: string[] } | { file: string };
  /** The command that starts the service again once its cause is fixed (for messages). */
  restart: string[];
}

/** What the manager says of a service that install has just started. */
export type StartState =
  | { kind: "starting" }
  | { kind: "running" }
  /** It exited (and may be waiting to be restarted); `exitCode` when the manager says. */
  | { kind: "stopped"; exitCode: number | null; detail: string };

/**
 * Reads the manager's answer to `plan.probe`. systemd: `systemctl show -p ActiveState,SubState,
 * ExecMainStatus`; a unit in `auto-restart` has exited even though systemd calls it
 * "activating". launchd: `launchctl print`; a job that has a last exit code has exited since it
 * was bootstrapped, whatever its state is now.
 */
export function readStartState(manager: ServiceManager, answer: { code: number; output: string }): StartState {
  if (manager === "launchd") {
    if (answer.code !== 0) return { kind: "stopped", exitCode: null, detail: "launchd no longer knows the job" };
    const job = parseLaunchctlPrint(answer.output);
    if (job.lastExitCode !== null)
      return {
        kind: "stopped",
        exitCode: job.lastExitCode,
        detail: `state ${job.state ?? "?"}, runs ${job.runs ?? "?"}`,
      };
    return job.state === "running" ? { kind: "running" } : { kind: "starting" };
  }
  const fields = new Map(
    answer.output
      .split("\n")
      .map((line) => /^([A-Za-z]+)=(.*)$/.exec(line.trim()))
      .filter((match) => match !== null)
      .map((match) => [match[1]!, match[2]!] as const),
  );
  const active = fields.get("ActiveState");
  const sub = fields.get("SubState") ?? "?";
  const status = fields.get("ExecMainStatus");
  const exitCode = status !== undefined && /^\d+$/.test(status) ? Number(status) : null;
  if (active === "active") return sub === "running" || sub === "?" ? { kind: "running" } : { kind: "starting" };
  if (active === "activating" && sub !== "auto-restart") return { kind: "starting" };
  if (active === undefined || active === "reloading") return { kind: "starting" };
  return { kind: "stopped", exitCode, detail: `${active} (${sub})` };
}

/** By absolute path: a PATH that another tool shadows must not decide what runs the service. */
export const LAUNCHCTL = "/bin/launchctl";

/** What `launchctl print <target>` says of a job, from the fields that tell a crash loop from a run. */
export interface LaunchdJobState {
  /** "running", "spawn scheduled", "not running"...; null when the output has no state line. */
  state: string | null;
  pid: number | null;
  /** Null while the job has never exited. */
  lastExitCode: number | null;
  runs: number | null;
}

/** Reads the job's own fields (one tab deep), not those of nested blocks such as its endpoints. */
export function parseLaunchctlPrint(output: string): LaunchdJobState {
  const fields = new Map<string, string>();
  for (const line of output.split("\n")) {
    const match = /^\t([a-z][a-z ]*?) = (.*)$/.exec(line);
    if (match && !fields.has(match[1]!)) fields.set(match[1]!, match[2]!.trim());
  }
  const int = (key: string) => {
    const text = fields.get(key);
    return text !== undefined && /^-?\d+$/.test(text) ? Number(text) : null;
  };
  return {
    state: fields.get("state") ?? null,
    pid: int("pid"),
    lastExitCode: int("last exit code"),
    runs: int("runs"),
  };
}

/**
 * Whether the manager's answers (to `plan.inspect`, in order) say the service runs. systemd's
 * `is-enabled`/`is-active` exit 0 only when it does; `launchctl print` exits 0 for any loaded
 * job, a crash-looping one included, so its state line decides.
 */
export function isServiceRunning(manager: ServiceManager, answers: { code: number; output: string }[]): boolean {
  if (manager === "systemd") return answers.length > 0 && answers.every((answer) => answer.code === 0);
  const print = answers[0];
  return print !== undefined && print.code === 0 && parseLaunchctlPrint(print.output).state === "running";
}

/** After the drain deadline, how long the service manager still waits before SIGKILL. */
export const STOP_MARGIN_S = 30;
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export function serviceManagerFor(platform: NodeJS.Platform): ServiceManager | null {
  if (platform === "linux") return "systemd";
  if (platform === "darwin") return "launchd";
  return null;
}

export function planService(inputs: ServiceInputs): ServicePlan {
  if (!NAME_PATTERN.test(inputs.name))
    throw new RunnerError(
      "usage",
      `service name ${JSON.stringify(inputs.name)}: use 1-64 letters, digits, '.', '_' and '-'`,
    );
  const manager = serviceManagerFor(inputs.platform);
  if (manager === "systemd") return planSystemd(inputs);
  if (manager === "launchd") {
    if (inputs.hardened)
      throw new RunnerError("usage", "--hardened is a systemd sandboxing profile; launchd has no equivalent to apply");
    return planLaunchd(inputs);
  }
  throw new RunnerError(
    "usage",
    `no service manager is supported on ${inputs.platform}: run \`runner start\` under your own supervisor`,
  );
}

/**
 * How long the manager waits for a stop before it kills: the drain, then the longest cancel
 * grace a job can have (jobs still running at the drain deadline are cancelled and get their
 * grace), then the margin for delivering their results and stopping the workers.
 */
export function stopTimeoutSeconds(drainTimeoutMs: number): number {
  return Math.ceil((drainTimeoutMs + MAX_CANCEL_GRACE_MS) / 1000) + STOP_MARGIN_S;
}

function planSystemd(inputs: ServiceInputs): ServicePlan {
  const unit = `${inputs.name}.service`;
  const configHome =
    inputs.env.XDG_CONFIG_HOME && path.isAbsolute(inputs.env.XDG_CONFIG_HOME)
      ? inputs.env.XDG_CONFIG_HOME
      : path.join(inputs.home, ".config");
  const unitFile = inputs.system
    ? path.join("/etc/systemd/system", unit)
    : path.join(configHome, "systemd", "user", unit);
  const systemctl = inputs.system ? ["systemctl"] : ["systemctl", "--user"];
  const content = fill(inputs.templates.systemd, {
    NAME: inputs.name,
    EXEC_START: inputs.argv.map((arg) => quoteSystemdArg(arg)).join(" "),
    PATH_ASSIGNMENT: quoteSystemdArg(`PATH=${searchPath(inputs)}`, { expandsVariables: false }),
    USER_LINES: inputs.system && inputs.runAs !== "root" ? `User=${inputs.runAs}\n` : "",
    STOP_TIMEOUT_S: String(stopTimeoutSeconds(inputs.drainTimeoutMs)),
    NO_RESTART_EXITS: NO_RESTART_EXITS.join(" "),
    STATE_DIR: systemdPath(inputs.stateDir),
    HARDENING: inputs.hardened ? hardeningLines(inputs) : "",
    WANTED_BY: inputs.system ? "multi-user.target" : "default.target",
  });
  return {
    manager: "systemd",
    unit,
    unitFile,
    content,
    dirs: [],
    // A unit that runs already would not be restarted by `enable --now`: stop it first (a stop
    // drains, like launchd's bootout), so the runner that starts is the one just written.
    unloadFirst: [[...systemctl, "stop", unit]],
    load: [
      [...systemctl, "daemon-reload"],
      [...systemctl, "enable", "--now", unit],
    ],
    // A per-user service starts at boot, not at login, only when the user lingers.
    afterLoad: inputs.system ? [] : [["loginctl", "enable-linger", inputs.user]],
    unload: [[...systemctl, "disable", "--now", unit]],
    afterRemove: [[...systemctl, "daemon-reload"]],
    inspect: [
      [...systemctl, "is-enabled", unit],
      [...systemctl, "is-active", unit],
    ],
    // `systemctl disable --now` returns once the unit has stopped.
    loaded: null,
    stopTimeoutMs: stopTimeoutSeconds(inputs.drainTimeoutMs) * 1000,
    probe: [...systemctl, "show", unit, "-p", "ActiveState,SubState,ExecMainStatus"],
    logs: { command: ["journalctl", ...(inputs.system ? [] : ["--user"]), "-u", unit, "-n", "20", "--no-pager"] },
    restart: [...systemctl, "restart", unit],
  };
}

/** Home dirs, which a machine-wide hardened unit replaces with empty read-only file systems (ProtectHome=tmpfs). */
const HOMES = ["/home", "/root", "/run/user"];

/**
 * `--hardened`: the unit's processes (the runner and every job) see the file system read-only
 * except the state dir, the work dir and a private /tmp, cannot gain privileges (setuid,
 * file capabilities), load kernel modules, change kernel tunables, the clock or the hostname,
 * create namespaces, use realtime scheduling or non-native system calls, and are limited to
 * the system calls of ordinary services and to Unix, IP and netlink sockets. Devices stay
 * visible (GPUs, USB, adb), and writable-executable memory stays allowed (node's JIT needs
 * it). A per-user manager applies these only inside a user namespace (PrivateUsers=yes).
 */
export function hardeningLines(inputs: ServiceInputs): string {
  const inHome = [inputs.stateDir, inputs.workDir].find((dir) =>
    HOMES.some((home) => dir === home || dir.startsWith(`${home}/`)),
  );
  if (inputs.system && inHome !== undefined)
    throw new RunnerError(
      "usage",
      `--hardened hides ${HOMES.join(", ")} from a machine-wide service (ProtectHome=tmpfs), but ${inHome} is there`,
      {
        hint: "keep the state dir and work dir elsewhere (the default /var/lib/runner), or install without --hardened",
      },
    );
  // The work dir may not exist yet (the runner creates it at start): "-" lets systemd skip it then.
  const writable = [systemdPath(inputs.stateDir)];
  const within = inputs.workDir === inputs.stateDir || inputs.workDir.startsWith(`${inputs.stateDir}/`);
  if (!within) writable.push(`-${systemdPath(inputs.workDir)}`);
  const lines = [
    "# --hardened: a read-only system except the state dir, the work dir and a private /tmp;",
    "# no privilege gain, kernel changes, namespaces or unusual system calls (see the README).",
    ...(inputs.system
      ? ["ProtectHome=tmpfs", "ProtectProc=invisible", "CapabilityBoundingSet=", "AmbientCapabilities="]
      : ["PrivateUsers=yes", "ProtectHome=read-only"]),
    "ProtectSystem=strict",
    `ReadWritePaths=${writable.join(" ")}`,
    "PrivateTmp=yes",
    "NoNewPrivileges=yes",
    "RestrictSUIDSGID=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "LockPersonality=yes",
    "RestrictRealtime=yes",
    "RestrictNamespaces=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
  ];
  return lines.join("\n") + "\n";
}

function planLaunchd(inputs: ServiceInputs): ServicePlan {
  const label = `dev.runner.${inputs.name}`;
  // A LaunchAgent lives in a login (gui) session, which a headless Mac may never have; a
  // machine-wide LaunchDaemon runs at boot as `runAs`.
  const domain = inputs.system ? "system" : `gui/${inputs.uid}`;
  const unitFile = inputs.system
    ? path.join("/Library/LaunchDaemons", `${label}.plist`)
    : path.join(inputs.home, "Library", "LaunchAgents", `${label}.plist`);
  const logDir = inputs.system ? "/Library/Logs/runner" : path.join(inputs.home, "Library", "Logs", "runner");
  const logFile = path.join(logDir, `${inputs.name}.log`);
  const content = fill(inputs.templates.launchd, {
    LABEL: xmlEscape(label),
    PROGRAM_ARGUMENTS: inputs.argv.map((arg) => `    <string>${xmlEscape(arg)}</string>`).join("\n"),
    USER_KEYS: inputs.system ? `  <key>UserName</key>\n  <string>${xmlEscape(inputs.runAs)}</string>\n` : "",
    BLOCKED_MARKER: xmlEscape(stateFiles(inputs.stateDir).blocked),
    STATE_DIR: xmlEscape(inputs.stateDir),
    STOP_TIMEOUT_S: String(stopTimeoutSeconds(inputs.drainTimeoutMs)),
    LOG_FILE: xmlEscape(logFile),
    PATH: xmlEscape(searchPath(inputs)),
  });
  const target = `${domain}/${label}`;
  return {
    manager: "launchd",
    unit: label,
    unitFile,
    content,
    dirs: [logDir],
    unloadFirst: [[LAUNCHCTL, "bootout", target]],
    load: [
      [LAUNCHCTL, "enable", target],
      [LAUNCHCTL, "bootstrap", domain, unitFile],
    ],
    afterLoad: [],
    unload: [[LAUNCHCTL, "bootout", target]],
    afterRemove: [],
    inspect: [[LAUNCHCTL, "print", target]],
    // bootout returns while the job still drains; bootstrap before it is gone fails with
    // "5: Input/output error".
    loaded: [LAUNCHCTL, "print", target],
    stopTimeoutMs: stopTimeoutSeconds(inputs.drainTimeoutMs) * 1000,
    probe: [LAUNCHCTL, "print", target],
    logs: { file: logFile },
    restart: [LAUNCHCTL, "kickstart", "-k", target],
  };
}

/** Replaces every {{NAME}}; a placeholder without a value is a bug in the caller. */
export function fill(template: string, values: Record<string, string>): string {
  return template.replace(/\{\{([A-Z_]+)\}\}/g, (match, name: string) => {
    const value = values[name];
    if (value === undefined) throw new RunnerError("internal", `template placeholder ${match} has no value`);
    return value;
  });
}

/** The installer's PATH (a minimal one if it has none), which the service's processes get. */
function searchPath(inputs: ServiceInputs): string {
  return inputs.env.PATH || "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
}

/** A path as a whole unit-file value (WorkingDirectory=): only systemd's `%` specifiers need escaping. */
function systemdPath(value: string): string {
  if (/[\n\r]/.test(value))
    throw new RunnerError("usage", `a service path cannot hold a line break: ${JSON.stringify(value)}`);
  return value.replace(/%/g, "%%");
}

/**
 * One ExecStart argument (or Environment= assignment): double-quoted, with backslash and quote
 * escaped, and systemd's own expansions disabled (`%` specifiers become `%%`; in ExecStart,
 * `$` variables become `$$`, while Environment= expands none).
 */
export function quoteSystemdArg(
  arg: string,
  options: { expandsVariables: boolean } = { expandsVariables: true },
): string {
  if (/[\n\r]/.test(arg))
    throw new RunnerError("usage", `a service argument cannot hold a line break: ${JSON.stringify(arg)}`);
  let escaped = arg.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/%/g, "%%");
  if (options.expandsVariables) escaped = escaped.replace(/\$/g, "$$$$");
  return `"${escaped}"`;
}

export function xmlEscape(text: string): string {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&apos;");
}
