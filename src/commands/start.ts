// runner start: the daemon in the foreground (what the service units run). Before it takes
// any work it runs the same verify-and-repair plan as `runner repair`: safe fixes are applied
// and logged; anything that needs a person stops it with the "needs an operator" exit code,
// which the service units treat as "do not restart".
import { Command } from "commander";
import { ExitCode } from "../errors.js";
import { checkContextFor, loadContext, withSettings } from "../cli/context.js";
import { action, describeFinding, exitCodeForRemaining } from "../cli/output.js";
import { repairProblems, repairStateDirFirst } from "../startup/check.js";
import { acquireLock } from "../state/lock.js";

export function defineStartCommand(program: Command): void {
  const command = program
    .command("start")
    .summary("run the runner in the foreground (what the service runs)")
    .description(
      `Takes the state dir's lock (exit ${ExitCode.ALREADY_RUNNING} if another runner holds it), verifies and repairs the local\n` +
        `state and the registration, then serves the control plane. Exits ${ExitCode.NEEDS_OPERATOR} when a person must act\n` +
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
        if (report.remaining.length > 0) {
          for (const finding of report.remaining) log.error({ finding: finding.code, fix: finding.fix }, describeFinding(finding).join("\n"));
          return exitCodeForRemaining(report.remaining);
        }
        log.info({ stateDir: ctx.files.stateDir }, "startup checks passed");
        return ExitCode.OK;
      } finally {
        await lock.release();
      }
    }),
  );
}
