// runner verify: report every problem with the local state and the registration; change nothing.
import { Command } from "commander";
import { ExitCode } from "../errors.js";
import {
  checkContextFor,
  CONTROL_PLANE_SETTINGS,
  LOG_SETTINGS,
  loadContext,
  STATE_SETTINGS,
  withSettings,
} from "../cli/context.js";
import { withExamples } from "../cli/examples.js";
import type { SettingKey } from "../config/settings.js";
import { action, describeFinding, print, printJson } from "../cli/output.js";
import { findProblems } from "../startup/check.js";

/**
 * The settings verify reads: the state dir, the work dir (whose owner and writability are
 * judged with it: the one the service's `--work-dir` names, not only the default), and what it
 * needs to ask the control plane about this host.
 */
export const CHECK_SETTINGS: readonly SettingKey[] = [
  ...STATE_SETTINGS,
  ...LOG_SETTINGS,
  ...CONTROL_PLANE_SETTINGS,
  "machineId",
  "workDir",
];

export function defineVerifyCommand(program: Command): void {
  const command = program
    .command("verify")
    .summary("check local state, credential and registration; exit 0 when healthy")
    .description(
      `Checks the state dir, its files and their permissions, whether the runner can write the state dir and the work dir, ` +
        `the lock, the credential store and the control plane's view of this runner. Changes nothing (it learns whether a ` +
        `dir is writable by creating and removing an empty file there). Exits ${ExitCode.OK} when healthy, ${ExitCode.UNHEALTHY} with the list of findings otherwise.`,
    )
    .option("--json", "print the findings as JSON");
  withSettings(command, CHECK_SETTINGS);
  withExamples(command, [
    { says: "check this runner: exit 0 when healthy, 3 with each finding and its fix", line: "runner verify" },
    { says: "the findings as JSON, for a monitoring script", line: "runner verify --json" },
    {
      says: "check the machine-wide runner (the one `service install --system` runs)",
      line: "sudo runner verify --system",
    },
  ]);
  command.action(
    action(async (options: Record<string, unknown>) => {
      const ctx = await loadContext(options);
      const findings = await findProblems(await checkContextFor(ctx, undefined));
      if (options.json) printJson({ healthy: findings.length === 0, stateDir: ctx.files.stateDir, findings });
      else if (findings.length === 0) print(`✓ healthy (state dir ${ctx.files.stateDir})`);
      else {
        for (const finding of findings) describeFinding(finding).forEach((l) => print(l));
        // Only point at `runner repair` when it has something to apply by itself.
        const fixable = findings.some((finding) => finding.fix.kind === "auto");
        print(
          fixable
            ? `${findings.length} problem(s); \`runner repair\` applies the fixes marked "fix"`
            : `${findings.length} problem(s); none that \`runner repair\` fixes by itself (see each one above)`,
        );
      }
      return findings.length === 0 ? ExitCode.OK : ExitCode.UNHEALTHY;
    }),
  );
}
