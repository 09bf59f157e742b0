// runner repair: apply every fix that is safe, say what each did, and name the command for the rest.
import { Command } from "commander";
import { ExitCode } from "../errors.js";
import { checkContextFor, loadContext, withSettings } from "../cli/context.js";
import { withExamples } from "../cli/examples.js";
import { CHECK_SETTINGS } from "./verify.js";
import { clearBlocked } from "../state/blocked.js";
import { action, describeFinding, exitCodeForRemaining, print, printRepairReport } from "../cli/output.js";
import { readToken } from "../cli/token-input.js";
import { findProblems, repairProblems, repairStateDirFirst, withEarlierSteps } from "../startup/check.js";
import { acquireLock } from "../state/lock.js";
import { lookupAccount } from "../state/owner.js";

interface RepairOptions extends Record<string, unknown> {
  dryRun?: boolean;
  token?: string;
  tokenFile?: string;
  owner?: string;
}

export function defineRepairCommand(program: Command): void {
  const command = program
    .command("repair")
    .summary("fix stale credentials and local state, saying what was done")
    .description(
      "Finds the same problems as `runner verify` and fixes those that are safe to fix: directory and file permissions, " +
        "half-written state files (kept aside, never deleted), stale locks, a host that changed. Given a registration token it " +
        "also re-registers a runner whose credential was revoked or lost or whose registration the control plane deleted, " +
        "keeping its name and labels. The outbox of unsent results is never touched.",
    )
    .option("--dry-run", "only print what would be done")
    .option(
      "--owner <user>",
      "(root) give the state dir, its files and the work dir to this user, as a machine-wide service running as that user needs",
    )
    .option("--token <token>", "a registration token, for re-registering (prefer --token-file)")
    .option("--token-file <file>", "read the registration token from this file, or - for standard input");
  // The same checks as verify, so the same settings.
  withSettings(command, CHECK_SETTINGS);
  withExamples(command, [
    { says: "show what would be fixed, changing nothing", line: "runner repair --dry-run" },
    { says: "fix what is safe to fix, saying what was done", line: "runner repair" },
    {
      says: "re-register a runner whose credential was revoked or lost, keeping its name and labels",
      line: "runner repair --token-file token.txt",
    },
  ]);
  command.action(
    action(async (options: RepairOptions) => {
      const ctx = await loadContext(options);
      const check = {
        ...(await checkContextFor(ctx, await readToken(options))),
        ...(options.owner === undefined ? {} : { owner: await lookupAccount(options.owner) }),
      };
      if (options.dryRun) {
        const findings = await findProblems(check);
        for (const finding of findings) describeFinding(finding).forEach((l) => print(l));
        print(findings.length === 0 ? "✓ nothing to repair" : "(dry run: nothing was changed)");
        return findings.length === 0 ? ExitCode.OK : ExitCode.UNHEALTHY;
      }
      // Repairs must not race a running daemon; the lock (taking over a stale one) keeps them apart.
      const stateDirStep = await repairStateDirFirst(check);
      const lock = await acquireLock(ctx.files.lock);
      try {
        if (lock.tookOver?.kind === "stale") print(`✓ took over a stale lock (${lock.tookOver.reason})`);
        const report = withEarlierSteps(await repairProblems(check), stateDirStep);
        printRepairReport(report);
        // Nothing left for a person: a service stopped for one may start again.
        if (report.remaining.every((f) => f.fix.kind === "retry") && (await clearBlocked(ctx.files.blocked))) {
          print("✓ removed the needs-operator marker: the service may start again");
        }
        // A refused registration token is the one thing to fix, and has its own exit code.
        const tokenRefused = report.steps.some((step) => step.errorCode === "registration_token_invalid");
        return tokenRefused && report.remaining.length > 0
          ? ExitCode.TOKEN_REFUSED
          : exitCodeForRemaining(report.remaining);
      } finally {
        await lock.release();
      }
    }),
  );
}
