// runner service install | uninstall | status: runs `runner start` under the machine's service
// manager (systemd on Linux, launchd on macOS), per user by default or machine-wide with
// --system. The unit runs this node and this runner with the same state dir and config file
// (if there is one), plus any of the daemon's settings given on this command line or in the
// environment (never a secret), with the installer's PATH.
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Command } from "commander";
import { ExitCode, NO_RESTART_EXITS, RunnerError } from "../errors.js";
import { checkContextFor, loadContext, STATE_SETTINGS, withSettings, type Context } from "../cli/context.js";
import { withExamples } from "../cli/examples.js";
import { action, print } from "../cli/output.js";
import { SETTINGS, type SettingKey, type SettingSpec } from "../config/settings.js";
import { readRegistration, type Registration } from "../state/registration.js";
import { describeMove, moveCredential } from "../credentials/move.js";
import { modeOf } from "../state/files.js";
import { clearBlocked, readBlocked } from "../state/blocked.js";
import {
  NAME_PATTERN,
  parseLaunchctlPrint,
  planService,
  serviceManagerFor,
  type ServicePlan,
} from "../service/render.js";
import {
  DEFAULT_START_WAIT,
  inspectService,
  installService,
  runCommand,
  uninstallService,
  waitUntilServing,
} from "../service/manager.js";
import { inspectLock } from "../state/lock.js";
import { chownNoFollow, lookupAccount, type Account } from "../state/owner.js";
import { giveStateDir } from "../startup/check.js";
import { stableNodePath } from "../service/node-path.js";
import { parseProxyUrl } from "../net/proxy.js";
import { START_SETTINGS } from "./start.js";

const PACKAGE_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const RUNNER_BIN = path.join(PACKAGE_ROOT, "bin", "runner.js");
/** Settings the unit always passes itself. */
const PINNED: readonly SettingKey[] = ["stateDir", "system"];

interface ServiceOptions extends Record<string, unknown> {
  name: string;
  runAs?: string;
  start?: boolean;
  wait?: boolean;
  hardened?: boolean;
  credentialToFile?: boolean;
}

export function defineServiceCommand(program: Command): void {
  const service = program
    .command("service")
    .summary("install, remove or inspect the runner's system service (systemd, launchd)")
    .description(
      "Runs `runner start` at boot under systemd (Linux) or launchd (macOS). " +
        "Per user by default; machine-wide with --system (installed by root, run as --run-as). " +
        "Stopping the service drains it: running jobs finish and their results are delivered first. " +
        `Exits that a restart cannot fix (${NO_RESTART_EXITS.join(", ")}) are not restarted: fix the cause, then run \`runner repair\`.`,
    );
  const nameOption = (command: Command) =>
    command.option(
      "--name <name>",
      "the service's name: unit <name>.service, launchd label dev.runner.<name>",
      "runner",
    );

  const install = nameOption(service.command("install").summary("write the unit, enable it at boot and start it now"))
    .option("--run-as <user>", "with --system: the user the service runs as (default: $SUDO_USER, else you)")
    .option("--no-start", "write the unit only; do not load or start it")
    .option(
      "--no-wait",
      `do not wait (up to ${DEFAULT_START_WAIT.timeoutMs / 1000} s) for the runner to pass its start-up checks before returning`,
    )
    .option(
      "--hardened",
      "systemd: sandbox the service (read-only system except the state and work dirs, private /tmp, no privilege gain...; see the README for what jobs then cannot do)",
    )
    .option(
      "--credential-to-file",
      "first move the credential from the keychain to the state dir's 0600 file (as `runner credentials move --to file`)",
    );
  // The daemon's settings: each one given here is carried into the unit's `runner start`.
  withSettings(install, START_SETTINGS);
  withExamples(install, [
    { says: "run this runner at boot as you (systemd --user, or a LaunchAgent)", line: "runner service install" },
    {
      says: "machine-wide, run as the user ci, moving the credential out of the keychain first",
      line: "sudo runner service install --system --run-as ci --credential-to-file",
    },
    {
      says: "a second runner from its own state dir, with settings carried into its unit",
      line: "runner service install --name runner-2 --state-dir /srv/runner-2 --capacity 4",
    },
  ]);
  install.action(
    action(async (options: ServiceOptions) => {
      const ctx = await loadContext(options);
      const registration = await requireRegistration(ctx);
      const plan = await planFor(ctx, options);
      if (options.credentialToFile)
        for (const line of describeMove(await moveCredential(ctx.files, "file"))) print(line);
      else if (registration.credentialStore === "keychain") print(keychainAtBoot(ctx));
      const proxyNote = proxyVariablesNote(ctx);
      if (proxyNote) print(proxyNote);
      if (ctx.service.system) for (const line of await giveToServiceUser(ctx, plan, serviceUser(options))) print(line);
      // Cleared before loading: launchd would not keep alive a job whose marker is present.
      if (await clearBlocked(ctx.files.blocked)) print("✓ removed the needs-operator marker an earlier stop left");
      const loadedAt = Date.now();
      for (const line of await installService(plan, runCommand, { start: options.start !== false })) print(line);
      if (options.start !== false && options.wait !== false)
        print(await waitUntilServing(plan, runCommand, () => servingSince(ctx, loadedAt)));
      print(`runner service status${options.name === "runner" ? "" : ` --name ${options.name}`} shows how it is doing`);
      return ExitCode.OK;
    }),
  );

  const uninstall = nameOption(
    service.command("uninstall").summary("stop the service (draining running jobs) and remove its unit"),
  );
  // The drain timeout: how long a stop may take (the unit's stop timeout), so how long to wait for it.
  withSettings(uninstall, [...STATE_SETTINGS, "drainTimeoutMs"]);
  withExamples(uninstall, [
    { says: "stop the service (it drains first) and remove its unit", line: "runner service uninstall" },
    { says: "the machine-wide service", line: "sudo runner service uninstall --system" },
  ]);
  uninstall.action(
    action(async (options: ServiceOptions) => {
      const ctx = await loadContext(options);
      for (const line of await uninstallService(await planFor(ctx, options), runCommand)) print(line);
      print("the registration, credential and state dir are kept (`runner unregister` removes the runner)");
      return ExitCode.OK;
    }),
  );

  const status = nameOption(
    service
      .command("status")
      .summary(
        `the unit, what the service manager says, and why it stopped (exit ${ExitCode.UNHEALTHY} unless installed, running and not stopped for a person)`,
      ),
  );
  withSettings(status, STATE_SETTINGS);
  withExamples(status, [
    { says: "is the service installed and running, and if not, why", line: "runner service status" },
    { says: "the second runner's service", line: "runner service status --name runner-2" },
  ]);
  status.action(
    action(async (options: ServiceOptions) => {
      const ctx = await loadContext(options);
      const plan = await planFor(ctx, options);
      const state = await inspectService(plan, runCommand);
      print(`service: ${plan.unit} (${plan.manager}, ${ctx.service.system ? "machine-wide" : "per user"})`);
      print(`unit file: ${plan.unitFile} (${state.installed ? "installed" : "not installed"})`);
      for (const answer of state.manager) print(describeAnswer(plan, answer));
      if (state.installed && !state.running) print("not running: see the manager's answer above and the service's log");
      const blocked = await readBlocked(ctx.files.blocked);
      if (blocked)
        print(
          `stopped for a person since ${blocked.at || "?"}: exit ${blocked.exitCode}, ${blocked.reason}; fix it, then \`runner repair\``,
        );
      const healthy = state.installed && state.running && blocked === null;
      return healthy ? ExitCode.OK : ExitCode.UNHEALTHY;
    }),
  );
  for (const command of [install, uninstall, status]) command.exitOverride();
}

/** launchctl print's dozens of lines come down to the fields that tell a run from a crash loop. */
function describeAnswer(plan: ServicePlan, answer: { command: string; code: number; output: string }): string {
  if (plan.manager !== "launchd" || answer.code !== 0)
    return `${answer.command}: ${answer.output || `exit ${answer.code}`}`;
  const job = parseLaunchctlPrint(answer.output);
  const lastExit = job.lastExitCode === null ? "never exited" : `last exit code ${job.lastExitCode}`;
  return `${answer.command}: state ${job.state ?? "?"}, pid ${job.pid ?? "none"}, runs ${job.runs ?? "?"}, ${lastExit}`;
}

async function planFor(ctx: Context, options: ServiceOptions): Promise<ServicePlan> {
  if (!NAME_PATTERN.test(options.name))
    throw new RunnerError(
      "usage",
      `--name ${JSON.stringify(options.name)}: use 1-64 letters, digits, '.', '_' and '-'`,
    );
  if (serviceManagerFor(process.platform) === null) {
    throw new RunnerError("usage", `no service manager is supported on ${process.platform}`, {
      hint: "run `runner start` in the foreground, under your own supervisor",
    });
  }
  if (options.runAs !== undefined && !ctx.service.system)
    throw new RunnerError("usage", "--run-as needs --system (a per-user service runs as you)");
  const user = os.userInfo().username;
  const templates = {
    systemd: await fs.readFile(path.join(PACKAGE_ROOT, "systemd", "runner.service"), "utf8"),
    launchd: await fs.readFile(path.join(PACKAGE_ROOT, "launchd", "runner.plist"), "utf8"),
  };
  return planService({
    platform: process.platform,
    home: os.homedir(),
    uid: process.getuid?.() ?? 0,
    user,
    env: process.env,
    name: options.name,
    ...ctx.service,
    runAs: serviceUser(options),
    workDir: ctx.fitness.workDir,
    hardened: options.hardened === true,
    argv: [
      stableNodePath(process.execPath, process.env.PATH),
      RUNNER_BIN,
      "start",
      ...(await configFlag(ctx)),
      "--state-dir",
      ctx.service.stateDir,
      ...(ctx.service.system ? ["--system"] : []),
      ...carriedFlags(ctx, options),
    ],
    templates,
  });
}

/** The user a machine-wide service runs as. */
function serviceUser(options: ServiceOptions): string {
  return options.runAs ?? process.env.SUDO_USER ?? os.userInfo().username;
}

/**
 * A machine-wide service is registered and installed by root but runs as its user, who must
 * own the state dir, everything in it and the work dir (which register made root's, 0700).
 * The ownership part of \`runner repair --owner <user>\`. Only root can do it; anyone else
 * cannot write the unit either, and is told so there.
 */
async function giveToServiceUser(ctx: Context, plan: ServicePlan, user: string): Promise<string[]> {
  if (process.getuid?.() !== 0) return [];
  const owner = await lookupAccount(user);
  const steps = await giveStateDir({ ...(await checkContextFor(ctx, undefined)), owner });
  const lines = steps.length === 0 ? [`✓ ${ctx.files.stateDir} and its files already belong to ${owner.name}`] : [];
  for (const step of steps) lines.push(`✓ ${step.outcome}`);
  // The runner caps launchd's log itself (src/service/log-cap.ts): its copies go beside it.
  if ("file" in plan.logs) {
    const logDir = path.dirname(plan.logs.file);
    await fs.mkdir(logDir, { recursive: true, mode: 0o755 });
    await chownNoFollow(logDir, owner, true);
    lines.push(`✓ gave ${logDir} to ${owner.name}`);
  }
  for (const dir of [ctx.files.stateDir, ctx.fitness.workDir]) {
    const closed = await closedAncestor(dir, owner);
    if (closed) lines.push(`! ${owner.name} cannot reach ${dir}: ${closed}; the service would fail to start`);
  }
  return lines;
}

/** The first dir above `dir` that `owner` may not pass through (no x bit for it), described; null when none. */
async function closedAncestor(dir: string, owner: Account): Promise<string | null> {
  for (let up = path.dirname(dir); ; up = path.dirname(up)) {
    const stat = await fs.stat(up).catch(() => null);
    if (stat !== null) {
      const bit = stat.uid === owner.uid ? 0o100 : stat.gid === owner.gid ? 0o010 : 0o001;
      if ((stat.mode & bit) === 0)
        return `${up} has mode 0${(stat.mode & 0o777).toString(8)} and belongs to ${stat.uid === 0 ? "root" : `uid ${stat.uid}`}`;
    }
    if (up === path.dirname(up)) return null;
  }
}

/** Whether the runner on the state dir passed its start-up checks since `since` (ms since the epoch). */
async function servingSince(ctx: Context, since: number): Promise<boolean> {
  const lock = await inspectLock(ctx.files.lock);
  return lock.kind === "held" && lock.owner.servingSince !== undefined && Date.parse(lock.owner.servingSince) >= since;
}

/** The config file, when there is one: `--config` makes it required, and a missing one would stop the service. */
async function configFlag(ctx: Context): Promise<string[]> {
  return (await modeOf(ctx.configFile)) === null ? [] : ["--config", ctx.configFile];
}

/**
 * The daemon's settings given to this command by flag or environment become flags of the
 * service's `start`; any other setting's environment variable stays behind (start would refuse
 * its flag).
 */
function carriedFlags(ctx: Context, options: ServiceOptions): string[] {
  const flags: string[] = [];
  for (const [key, source] of Object.entries(ctx.resolved.sources) as [SettingKey, string][]) {
    if (!START_SETTINGS.includes(key) || PINNED.includes(key) || (source !== "flag" && source !== "env")) continue;
    const spec = SETTINGS[key] as SettingSpec<unknown>;
    const raw = source === "flag" ? options[key] : process.env[spec.env];
    if (key === "proxy" && typeof raw === "string") refuseProxyCredentials(ctx, raw, source);
    if (spec.arg === undefined) {
      if (ctx.settings[key] === true) flags.push(spec.flag);
    } else if (key === "workDir") {
      // Absolute, as resolved here: the unit runs in the state dir, where a relative one would land elsewhere.
      flags.push(spec.flag, ctx.fitness.workDir);
    } else if (typeof raw === "string") {
      flags.push(spec.flag, raw);
    }
  }
  return flags;
}

/**
 * A proxy's password must not reach the unit's command line, which every user of the machine
 * can read (ps, systemctl status, the unit file): such a proxy belongs in the config file.
 */
function refuseProxyCredentials(ctx: Context, raw: string, source: string): void {
  const url = parseProxyUrl(raw);
  if (typeof url === "string" || (url.username === "" && url.password === "")) return;
  throw new RunnerError(
    "usage",
    `the proxy given by ${source === "flag" ? SETTINGS.proxy.flag : `$${SETTINGS.proxy.env}`} holds credentials, which the service's command line would show to every user of this machine`,
    {
      hint: `put "proxy" in the config file ${ctx.configFile} (mode 0600), which the service reads, and install without it`,
    },
  );
}

/** The service does not inherit this shell's environment: proxy variables set here would not reach it. */
function proxyVariablesNote(ctx: Context): string | null {
  const { https, http } = ctx.controlPlane.proxy;
  const names = [https, http].flatMap((variable) => (variable === null ? [] : [variable.name]));
  if (ctx.resolved.sources.proxy !== "default" || names.length === 0) return null;
  return `! ${names.join(" and ")} ${names.length > 1 ? "are" : "is"} set in this shell, but the service does not inherit its environment: install with --proxy <url> (or set "proxy" in the config file) for the service to use a proxy`;
}

/**
 * A service starts at boot, before anyone logs in: a machine-wide one can never read a login
 * keyring or keychain, so it is refused; a per-user one on Linux (started by lingering) finds
 * the Secret Service keyring locked until its user logs in, so it is warned about. A
 * LaunchAgent runs inside the user's login session, where the login keychain is unlocked.
 */
function keychainAtBoot(ctx: Context): string {
  const move = "move it first: runner credentials move --to file (or install with --credential-to-file)";
  if (ctx.settings.system)
    throw new RunnerError(
      "usage",
      "the credential is in a keychain, which a machine-wide service cannot read at boot (no one has logged in to unlock it)",
      { hint: move },
    );
  return process.platform === "linux"
    ? `! the credential is in the Secret Service keyring, which stays locked until you log in: started at boot, the service would stop with exit ${ExitCode.NEEDS_OPERATOR}; ${move}`
    : "✓ the credential is in the login keychain, which the LaunchAgent's login session unlocks";
}

async function requireRegistration(ctx: Context): Promise<Registration> {
  const read = await readRegistration(ctx.files.registration);
  if (read.kind === "ok") return read.value;
  throw new RunnerError(
    "not_registered",
    read.kind === "missing"
      ? `no runner is registered in ${ctx.files.stateDir}`
      : `registration.json is unusable: ${read.reason}`,
    {
      hint:
        read.kind === "missing"
          ? "register first: runner register --url <control plane> --token-file <file>, with the same --state-dir/--system"
          : "run `runner repair` first",
    },
  );
}
