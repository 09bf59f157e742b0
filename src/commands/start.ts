// runner start: the daemon in the foreground (what the service units run). Before it takes
// any work it runs the same verify-and-repair plan as `runner repair`: safe fixes are applied
// and logged; anything that needs a person stops it with the "needs an operator" exit code,
// which the service units treat as "do not restart" (and leaves the needs-operator marker,
// which launchd watches). Then the daemon runs until drained.
import { Command } from "commander";
import { describeError, exitCodeFor, ExitCode, NO_RESTART_EXITS, RunnerError } from "../errors.js";
import {
  checkContextFor,
  CONTROL_PLANE_SETTINGS,
  LOG_SETTINGS,
  loadContext,
  STATE_SETTINGS,
  withSettings,
  type Context,
} from "../cli/context.js";
import { withExamples } from "../cli/examples.js";
import type { SettingKey } from "../config/settings.js";
import { action, describeFinding, exitCodeForRemaining } from "../cli/output.js";
import { repairProblems, repairStateDirFirst } from "../startup/check.js";
import { acquireLock } from "../state/lock.js";
import { loadIdentity } from "../startup/identity.js";
import { runDaemon } from "../daemon/daemon.js";
import { ONCE_DONE } from "../channel/machine.js";
import { forgetRunner } from "../startup/unregister.js";
import { clearBlocked, LAUNCHD_MARKER_ENV, markBlocked } from "../state/blocked.js";
import { startLaunchdLogCap } from "../service/log-cap.js";

/**
 * The daemon's settings: every one but credentialStore (the registration names the store the
 * credential is in). `service install` takes the same ones and carries them into the unit.
 */
export const START_SETTINGS: readonly SettingKey[] = [
  ...STATE_SETTINGS,
  ...LOG_SETTINGS,
  ...CONTROL_PLANE_SETTINGS,
  "machineId",
  "once",
  "exitAfterIdle",
  "statusPort",
  "capacity",
  "drainTimeoutMs",
  "reconnectBaseMs",
  "reconnectCapMs",
  "workerMaxRssMb",
  "workerHardRssMb",
  "workerMaxFds",
  "workerMaxAgeS",
  "workerMaxJobs",
  "workDir",
  "minFreeDiskMb",
  "handlers",
  "deviceProviders",
  "deviceScanIntervalMs",
  "deviceRefreshMs",
  "deviceBatchSize",
  "deviceProviderTimeoutMs",
];

export function defineStartCommand(program: Command): void {
  const command = program
    .command("start")
    .summary("run the runner in the foreground (what the service runs)")
    .description(
      `Takes the state dir's lock (exit ${ExitCode.ALREADY_RUNNING} if another runner holds it), verifies and repairs the local ` +
        `state and the registration, then serves the control plane until SIGTERM (which drains: running jobs finish, results ` +
        `are delivered; a second signal cancels them). An unreachable control plane is retried for ever, with backoff. ` +
        `Exits ${ExitCode.NEEDS_OPERATOR} when a person must act ` +
        `(revoked credential, deleted registration, a state dir of another user's, even run by root...) and ${ExitCode.UPGRADE_REQUIRED} when the control plane needs a newer runner.`,
    );
  withSettings(command, START_SETTINGS);
  withExamples(command, [
    {
      says: "run in the foreground with readable logs, two jobs at a time",
      line: "runner start --capacity 2 --log-format pretty",
    },
    {
      says: "an ephemeral runner for an autoscaled machine: one job, then unregister and exit 0",
      line: "runner start --once",
    },
    {
      says: "exit 0 after 10 idle minutes, and give each job a fresh worker",
      line: "runner start --exit-after-idle 600 --worker-max-jobs 1",
    },
  ]);
  command.action(
    action(async (options: Record<string, unknown>) => {
      let ctx: Context | undefined;
      try {
        ctx = await loadContext(options, process.env, { forDaemon: true });
        return await serve(ctx);
      } catch (error) {
        // A state dir of another user's is left as it was: no marker of this user's in it (it is
        // its owner's service that would have stopped for a person, and it has not). Under launchd
        // the marker still holds the job, as for any exit that restarting cannot fix.
        const notOurs = error instanceof RunnerError && error.code === "state_dir_owner";
        await stopFor(ctx, exitCodeFor(error), describeError(error), !notOurs);
        throw error;
      }
    }),
  );
}

async function serve(ctx: Context): Promise<number> {
  const log = ctx.logger;
  const check = await checkContextFor(ctx, undefined);
  // Run by root on another user's state dir, start refuses before it writes anything there.
  await repairStateDirFirst(check, { forDaemon: true });
  const lock = await acquireLock(ctx.files.lock);
  let logCap: { stop(): void } | null = null;
  try {
    if (lock.tookOver?.kind === "stale") log.warn({ reason: lock.tookOver.reason }, "took over a stale lock");
    const report = await repairProblems(check);
    // An unreachable control plane is no reason not to start: the channel retries for ever.
    const blocking = report.remaining.filter((f) => f.fix.kind !== "retry");
    for (const finding of report.remaining) {
      log[blocking.includes(finding) ? "error" : "warn"](
        { finding: finding.code, fix: finding.fix },
        describeFinding(finding).join("\n"),
      );
    }
    if (blocking.length > 0)
      return await stopFor(
        ctx,
        exitCodeForRemaining(blocking),
        `start-up checks: ${blocking.map((f) => f.code).join(", ")}`,
      );
    log.info({ stateDir: ctx.files.stateDir }, "startup checks passed");
    await lock.markServing(ctx.now()); // what `runner service install` waits for
    logCap = startLaunchdLogCap(process.env, log);
    if (await clearBlocked(ctx.files.blocked)) log.info("removed the needs-operator marker an earlier stop left");
    const { registration, credential } = await loadIdentity(ctx.files);
    const exit = await runDaemon({
      registration,
      credential,
      files: ctx.files,
      logger: log,
      insecurePlaintext: ctx.controlPlane.insecurePlaintext,
      proxy: ctx.controlPlane.proxy,
      channel: ctx.channel,
      pool: ctx.pool,
      rlimitNofile: ctx.rlimitNofile,
      deviceSync: ctx.deviceSync,
      fitness: ctx.fitness,
      status: ctx.status,
    });
    // An ephemeral runner whose one job is done leaves no registration behind.
    if (exit.reason === ONCE_DONE) {
      for (const line of await forgetRunner(ctx.files, {
        localOnly: false,
        requestTimeoutMs: ctx.controlPlane.requestTimeoutMs,
        proxy: ctx.controlPlane.proxy,
        insecurePlaintext: ctx.controlPlane.insecurePlaintext,
      }))
        log.info(line);
    }
    return await stopFor(ctx, exit.code, "the control plane refused this runner while it ran (see the log above)");
  } finally {
    logCap?.stop();
    await lock.release();
  }
}

/**
 * A command line `start` refuses (an unknown flag, a missing value: commander's own errors,
 * before the action runs) exits 2 like any bad setting, so under launchd it leaves the marker
 * too: a plist written by another version of the runner must not restart-loop.
 */
export async function stopForUsageError(message: string): Promise<void> {
  await stopFor(undefined, ExitCode.USAGE, message);
}

/**
 * Exits that need a person (78, 79) leave the needs-operator marker, which `runner status` and
 * `service status` show. Under launchd (which cannot be told which exits not to restart) every
 * exit in NO_RESTART_EXITS leaves it, at the path the plist gives, so that launchd leaves the
 * runner stopped until a person has acted. `ctx` is missing when the settings could not be read.
 * `inStateDir: false` leaves none in the state dir outside launchd.
 */
async function stopFor(ctx: Context | undefined, code: number, reason: string, inStateDir = true): Promise<number> {
  const underLaunchd = process.env[LAUNCHD_MARKER_ENV] || undefined;
  const forPerson = inStateDir && (code === ExitCode.NEEDS_OPERATOR || code === ExitCode.UPGRADE_REQUIRED);
  const marker = forPerson ? (underLaunchd ?? ctx?.files.blocked) : underLaunchd;
  if (marker === undefined || !NO_RESTART_EXITS.includes(code)) return code;
  try {
    await markBlocked(marker, code, reason, ctx?.now() ?? new Date());
  } catch (error) {
    // The exit code still tells systemd; under launchd the job will be started again.
    process.stderr.write(`runner: could not leave the marker ${marker}: ${(error as Error).message}\n`);
    return code;
  }
  const message = "stopped until a person acts: `runner repair` (or a clean `runner start`) removes the marker";
  if (ctx) ctx.logger.error({ marker, exitCode: code }, message);
  else process.stderr.write(`runner: ${message} (${marker})\n`);
  return code;
}
