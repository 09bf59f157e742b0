// Carries out a service plan: writes or removes the unit file and runs the service manager's
// commands (systemctl, loginctl, launchctl), each with a timeout. Every step is reported as a
// line for the person at the terminal; a failing step stops an install with the command,
// its exit code and what it printed.
import { execFile } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { RunnerError } from "../errors.js";
import { modeOf, writeFileAtomic } from "../state/files.js";
import { isServiceRunning, LAUNCHCTL, readStartState, type ServicePlan } from "./render.js";

export interface CommandOutcome {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command without a shell, for at most `timeoutMs` (default 30 s). A missing program is
 * `code: 127` and a timeout `code: 124`, as a shell and timeout(1) would say.
 */
export type RunCommand = (argv: string[], options?: { timeoutMs?: number }) => Promise<CommandOutcome>;

const COMMAND_TIMEOUT_MS = 30_000;
const TIMED_OUT = 124;
const UNIT_FILE_MODE = 0o644;

export const runCommand: RunCommand = (argv, options = {}) =>
  new Promise((resolve) => {
    const timeout = options.timeoutMs ?? COMMAND_TIMEOUT_MS;
    execFile(argv[0]!, argv.slice(1), { timeout, encoding: "utf8" }, (error, stdout, stderr) => {
      if (error === null) return resolve({ code: 0, stdout, stderr });
      const failure = error as NodeJS.ErrnoException & { code?: string | number; killed?: boolean };
      if (failure.code === "ENOENT") return resolve({ code: 127, stdout, stderr: `${argv[0]}: not found on PATH` });
      if (failure.killed)
        return resolve({ code: TIMED_OUT, stdout, stderr: `${stderr}${argv[0]}: timed out after ${timeout} ms` });
      resolve({ code: typeof failure.code === "number" ? failure.code : 1, stdout, stderr });
    });
  });

/** How often an install or uninstall asks whether the old job has gone, and how long past the stop timeout it waits. */
export interface UnloadWait {
  pollMs: number;
  marginMs: number;
}
const DEFAULT_WAIT: UnloadWait = { pollMs: 500, marginMs: COMMAND_TIMEOUT_MS };

/**
 * Unloads (a stop drains: it may take up to the unit's stop timeout) and, where unloading
 * returns before the job has stopped, waits until the manager no longer knows the job. Throws,
 * naming what still runs, when it outlives the stop timeout: the caller then changes nothing.
 */
async function unloadAndWait(plan: ServicePlan, commands: string[][], run: RunCommand, wait: UnloadWait) {
  const outcomes: { argv: string[]; outcome: CommandOutcome }[] = [];
  for (const argv of commands) {
    const outcome = await run(argv, { timeoutMs: plan.stopTimeoutMs + wait.marginMs });
    if (outcome.code === TIMED_OUT) throw stillStopping(plan, argv, wait);
    outcomes.push({ argv, outcome });
  }
  if (plan.loaded === null) return outcomes;
  const deadline = performance.now() + plan.stopTimeoutMs + wait.marginMs;
  while ((await run(plan.loaded)).code === 0) {
    if (performance.now() >= deadline) throw stillStopping(plan, plan.loaded, wait);
    await new Promise((resolve) => setTimeout(resolve, wait.pollMs));
  }
  return outcomes;
}

function stillStopping(plan: ServicePlan, argv: string[], wait: UnloadWait): RunnerError {
  const seconds = Math.round((plan.stopTimeoutMs + wait.marginMs) / 1000);
  return new RunnerError(
    "service_failed",
    `${plan.unit} is still stopping after ${seconds} s (\`${argv.join(" ")}\`): it drains its running jobs first`,
    { hint: "the unit file was left as it was; run the command again once the service has stopped" },
  );
}

/** Writes the unit and loads it; `start: false` only writes it (and enables it for the next boot where the manager can). */
export async function installService(
  plan: ServicePlan,
  run: RunCommand,
  options: { start: boolean },
  wait: UnloadWait = DEFAULT_WAIT,
): Promise<string[]> {
  const lines: string[] = [];
  await unloadAndWait(plan, plan.unloadFirst, run, wait); // not loaded yet is fine
  for (const dir of [path.dirname(plan.unitFile), ...plan.dirs])
    await fs.mkdir(dir, { recursive: true }).catch((error: unknown) => failWrite(dir, error));
  await writeFileAtomic(plan.unitFile, plan.content, UNIT_FILE_MODE, true).catch((error: unknown) =>
    failWrite(plan.unitFile, error),
  );
  lines.push(`✓ wrote ${plan.unitFile}`);
  if (!options.start) {
    lines.push(`(--no-start: not loaded; load it with: ${plan.load.map((argv) => argv.join(" ")).join(" && ")})`);
    return lines;
  }
  for (const argv of plan.load) {
    const outcome = await run(argv);
    if (outcome.code !== 0) {
      // A unit the manager would not take is not left behind, unless the manager still runs a
      // job from it (the file is what a later uninstall needs).
      if (plan.loaded === null || (await run(plan.loaded)).code !== 0) await fs.rm(plan.unitFile, { force: true });
      throw commandFailed(argv, outcome);
    }
    lines.push(`✓ ${argv.join(" ")}`);
  }
  for (const argv of plan.afterLoad) {
    const outcome = await run(argv);
    lines.push(
      outcome.code === 0
        ? `✓ ${argv.join(" ")}`
        : `! ${argv.join(" ")} failed (${describe(outcome)}): the service starts when you log in, not at boot`,
    );
  }
  return lines;
}

export async function uninstallService(
  plan: ServicePlan,
  run: RunCommand,
  wait: UnloadWait = DEFAULT_WAIT,
): Promise<string[]> {
  const lines: string[] = [];
  for (const { argv, outcome } of await unloadAndWait(plan, plan.unload, run, wait)) {
    lines.push(outcome.code === 0 ? `✓ ${argv.join(" ")}` : `- ${argv.join(" ")}: ${describe(outcome)} (not loaded?)`);
  }
  try {
    await fs.rm(plan.unitFile);
    lines.push(`✓ removed ${plan.unitFile}`);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") failWrite(plan.unitFile, error);
    lines.push(`- ${plan.unitFile} was not there`);
  }
  for (const argv of plan.afterRemove) {
    const outcome = await run(argv);
    if (outcome.code !== 0) lines.push(`! ${argv.join(" ")} failed: ${describe(outcome)}`);
  }
  return lines;
}

/** How often install asks whether the runner is up, and how long it waits for it. */
export interface StartWait {
  pollMs: number;
  timeoutMs: number;
}
/** The start-up checks ask the control plane (10 s per request by default) and may read a keychain (5 s). */
export const DEFAULT_START_WAIT: StartWait = { pollMs: 250, timeoutMs: 60_000 };
const LOG_LINES = 20;

/**
 * After install has loaded the unit: waits until the runner says it passed its start-up checks
 * (`serving()`: the lock the daemon holds records when) while the manager says it runs. A
 * runner that exits first (a revoked credential, a state dir it cannot read...) or never gets
 * there within the time is a failure, reported with the unit's last log lines.
 */
export async function waitUntilServing(
  plan: ServicePlan,
  run: RunCommand,
  serving: () => Promise<boolean>,
  wait: StartWait = DEFAULT_START_WAIT,
): Promise<string> {
  const deadline = performance.now() + wait.timeoutMs;
  for (;;) {
    const answer = await run(plan.probe);
    const state = readStartState(plan.manager, { code: answer.code, output: answer.stdout + answer.stderr });
    if (state.kind === "stopped") {
      const exit = state.exitCode === null ? state.detail : `exit ${state.exitCode}`;
      throw await notStarted(plan, run, `${plan.unit} stopped during its start-up checks (${exit})`);
    }
    if (state.kind === "running" && (await serving()))
      return `✓ ${plan.unit} is running: it passed its start-up checks`;
    if (performance.now() >= deadline)
      throw await notStarted(
        plan,
        run,
        `${plan.unit} did not pass its start-up checks within ${Math.round(wait.timeoutMs / 1000)} s (the manager says: ${state.kind})`,
      );
    await new Promise((resolve) => setTimeout(resolve, wait.pollMs));
  }
}

async function notStarted(plan: ServicePlan, run: RunCommand, what: string): Promise<RunnerError> {
  const lines = await lastLogLines(plan, run);
  return new RunnerError(
    "service_failed",
    `${what}; its last log lines (${"command" in plan.logs ? plan.logs.command.join(" ") : plan.logs.file}):\n${lines.map((line) => `  ${line}`).join("\n") || "  (none)"}`,
    {
      hint: `the unit stays installed: fix what the log says, run \`runner repair\`, then \`${plan.restart.join(" ")}\``,
    },
  );
}

async function lastLogLines(plan: ServicePlan, run: RunCommand): Promise<string[]> {
  if ("command" in plan.logs) {
    const outcome = await run(plan.logs.command);
    return (outcome.code === 0 ? outcome.stdout : `${outcome.stdout}${outcome.stderr}`)
      .trimEnd()
      .split("\n")
      .slice(-LOG_LINES);
  }
  return tailFile(plan.logs.file, LOG_LINES);
}

/** The last `count` lines of a file, reading at most its last 64 KiB; none when it does not exist. */
export async function tailFile(file: string, count: number): Promise<string[]> {
  const handle = await fs.open(file, "r").catch(() => null);
  if (handle === null) return [];
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, 64 * 1024);
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    const lines = buffer.toString("utf8").trimEnd().split("\n");
    if (length < size) lines.shift(); // cut mid-line
    return lines.slice(-count);
  } finally {
    await handle.close();
  }
}

export interface ServiceStatus {
  installed: boolean;
  /** Whether the manager's answers say the service runs (see isServiceRunning). */
  running: boolean;
  /** What the manager says, command by command. */
  manager: { command: string; code: number; output: string }[];
}

export async function inspectService(plan: ServicePlan, run: RunCommand): Promise<ServiceStatus> {
  const installed = (await modeOf(plan.unitFile)) !== null;
  const manager = [];
  for (const argv of plan.inspect) {
    const outcome = await run(argv);
    manager.push({ command: argv.join(" "), code: outcome.code, output: (outcome.stdout + outcome.stderr).trim() });
  }
  return { installed, running: isServiceRunning(plan.manager, manager), manager };
}

function describe(outcome: CommandOutcome): string {
  const said = (outcome.stderr.trim() || outcome.stdout.trim()).split("\n").slice(0, 5).join(" / ");
  return `exit ${outcome.code}${said ? `: ${said}` : ""}`;
}

function commandFailed(argv: string[], outcome: CommandOutcome): RunnerError {
  const hint =
    outcome.code === 127
      ? `${argv[0]} is not installed: this machine does not run that service manager; run \`runner start\` under your own supervisor`
      : argv.includes("--user")
        ? "a per-user systemd service needs your user manager (a login session, or `loginctl enable-linger`); or install machine-wide: sudo runner service install --system"
        : argv[0] === LAUNCHCTL && argv.some((a) => a.startsWith("gui/"))
          ? "a LaunchAgent needs a logged-in (gui) session, which a headless Mac may not have; install a LaunchDaemon instead: sudo runner service install --system"
          : undefined;
  return new RunnerError("service_failed", `\`${argv.join(" ")}\` failed (${describe(outcome)})`, { hint });
}

function failWrite(file: string, error: unknown): never {
  const code = (error as NodeJS.ErrnoException).code;
  throw new RunnerError("service_failed", `cannot write ${file}: ${code ?? (error as Error).message}`, {
    hint:
      code === "EACCES" || code === "EPERM"
        ? "a machine-wide service is installed by root: sudo runner service install --system"
        : undefined,
    cause: error,
  });
}
