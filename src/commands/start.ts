// runner start: the daemon in the foreground (what the service units run). Before it takes
// any work it runs the same verify-and-repair plan as `runner repair`: safe fixes are applied
// and logged; anything that needs a person stops it with the "needs an operator" exit code,
// which the service units treat as "do not restart" (and leaves the needs-operator marker,
// which launchd watches). Then the daemon runs until drained.
import { Command } from "commander";
import { ExitCode } from "../errors.js";
import { checkContextFor, loadContext, withSettings, type Context } from "../cli/context.js";
import { action, describeFinding, exitCodeForRemaining } from "../cli/output.js";
import { repairProblems, repairStateDirFirst } from "../startup/check.js";
import { acquireLock } from "../state/lock.js";
import { loadIdentity } from "../startup/identity.js";
import { runDaemon } from "../daemon/daemon.js";
import { clearBlocked, markBlocked } from "../state/blocked.js";

export function defineStartCommand(program: Command): void {
  const command = program
    .command("start")
    .summary("run the runner in the foreground (what the service runs)")
    .description(
      `Takes the state dir's lock (exit ${ExitCode.ALREADY_RUNNING} if another runner holds it), verifies and repairs the local\n` +
        `state and the registration, then serves the control plane until SIGTERM (which drains: running jobs finish, results\n` +
        `are delivered; a second signal cancels them). An unreachable control plane is retried for ever, with backoff.\n` +
        `Exits ${ExitCode.NEEDS_OPERATOR} when a person must act\n` +
        `(revoked credential, deleted registration...) and ${ExitCode.UPGRADE_REQUIRED} when the control plane needs a newer runner.`,
    );
  withSettings(command).action(
    action(async (options: Record<string, unknown>) => {
      const ctx = await loadContext(options);
      const log = ctx.logger;
      const check = await checkContextFor(ctx, undefined);
      await repairStateDirFirst(check);
      const lock = await acquireLock(ctx.files.lock);
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
        if (await clearBlocked(ctx.files.blocked)) log.info("removed the needs-operator marker an earlier stop left");
        const { registration, credential } = await loadIdentity(ctx.files);
        const code = await runDaemon({
          registration,
          credential,
          files: ctx.files,
          logger: log,
          insecurePlaintext: ctx.controlPlane.insecurePlaintext,
          channel: ctx.channel,
          pool: ctx.pool,
          rlimitNofile: ctx.rlimitNofile,
          deviceSync: ctx.deviceSync,
        });
        return await stopFor(ctx, code, "the control plane refused this runner while it ran (see the log above)");
      } finally {
        await lock.release();
      }
    }),
  );
}

/**
 * Exits that restarting cannot fix leave the needs-operator marker, so that a service manager
 * told to keep the runner alive (launchd) leaves it stopped until a person has acted.
 */
async function stopFor(ctx: Context, code: number, reason: string): Promise<number> {
  if (code === ExitCode.NEEDS_OPERATOR || code === ExitCode.UPGRADE_REQUIRED) {
    await markBlocked(ctx.files.blocked, code, reason, ctx.now());
    ctx.logger.error(
      { marker: ctx.files.blocked, exitCode: code },
      "stopped until a person acts: `runner repair` (or a clean `runner start`) removes the marker",
    );
  }
  return code;
}
