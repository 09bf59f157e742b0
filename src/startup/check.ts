// The verify-and-repair loop shared by `runner verify`, `runner repair` and `runner start`:
// observe, plan, apply the automatic fixes, and observe again, until nothing more can be
// fixed without a person. A fix that enables another (a rebuilt registration lets the
// credential be checked) is why it loops; the round limit guarantees it ends.
import { RunnerError, type ErrorCode } from "../errors.js";
import type { Logger } from "../log/logger.js";
import { applyFix, type ApplyContext } from "./apply.js";
import { observe, observeOwnership, observeStateDirOnly, type ObserveContext } from "./observe.js";
import { planOwnership, planRepairs, type Finding, type OwnershipSeen } from "./plan.js";

export type CheckContext = ObserveContext & ApplyContext & { logger: Logger };

export interface RepairStep {
  finding: Finding;
  ok: boolean;
  outcome: string;
  /** The error code of a failed fix, when it was a RunnerError. */
  errorCode?: ErrorCode;
}

export interface RepairReport {
  /** What was found before anything was changed. */
  found: Finding[];
  steps: RepairStep[];
  /** What still stands afterwards: operator work, or a control plane to wait for. */
  remaining: Finding[];
}

const MAX_ROUNDS = 5;

export async function findProblems(ctx: CheckContext): Promise<Finding[]> {
  const findings = planRepairs(await observe(ctx), { haveRegistrationToken: ctx.registrationToken !== undefined });
  ctx.logger.debug(
    { findings: findings.map((f) => f.code) },
    `checked ${ctx.files.stateDir}: ${findings.length} finding(s)`,
  );
  return findings;
}

export async function repairProblems(ctx: CheckContext): Promise<RepairReport> {
  const found = await findProblems(ctx);
  const steps: RepairStep[] = [];
  const failed = new Set<string>();
  let current = found;
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const todo = current.filter((f) => f.fix.kind === "auto" && !failed.has(f.code));
    if (todo.length === 0) break;
    for (const finding of todo) {
      if (finding.fix.kind !== "auto") continue;
      try {
        const outcome = await applyFix(finding.fix.action, ctx);
        steps.push({ finding, ok: true, outcome });
        ctx.logger.info({ finding: finding.code, outcome }, `repaired: ${finding.problem}`);
      } catch (error) {
        failed.add(finding.code);
        const outcome = error instanceof Error ? error.message : String(error);
        steps.push({ finding, ok: false, outcome, ...(error instanceof RunnerError ? { errorCode: error.code } : {}) });
        ctx.logger.warn({ finding: finding.code, outcome }, `repair failed: ${finding.problem}`);
      }
    }
    current = await findProblems(ctx);
  }
  return { found, steps, remaining: current };
}

/**
 * Creates a missing state dir on its own, before anything else, so that the lock inside it
 * can be taken before the other repairs run. Returns the step, or null when it existed.
 * `forDaemon` (`start`): root on another user's state dir is refused first.
 */
export async function repairStateDirFirst(
  ctx: CheckContext,
  options: { forDaemon?: boolean } = {},
): Promise<RepairStep | null> {
  const seen = await observeStateDirOnly(ctx);
  if (options.forDaemon) refuseRootOnAnotherUsersStateDir(seen.ownership);
  const findings = planRepairs(seen, { haveRegistrationToken: false });
  // Not even the lock can be taken in a state dir of someone else's: stop before trying.
  const owner = findings.find((f) => f.code === "state_dir_owner" && f.fix.kind === "operator");
  if (owner?.fix.kind === "operator")
    throw new RunnerError("state_dir_owner", owner.problem, {
      hint: `${owner.fix.description}: ${owner.fix.command ?? ""}`,
    });
  const [first] = findings;
  if (first?.code !== "state_dir_missing" || first.fix.kind !== "auto") return null;
  const outcome = await applyFix(first.fix.action, ctx);
  ctx.logger.info({ finding: first.code, outcome }, `repaired: ${first.problem}`);
  return { finding: first, ok: true, outcome };
}

/**
 * `runner start` run by root on a state dir another user owns (`sudo runner start` on the
 * service user's): the daemon would create its lock, status socket, job journal, results and
 * devices.json there as root's, and the service user could no longer use them. Refused before
 * anything is written; giving the dir to root first (`repair --owner root`) is the way to run
 * it as root on purpose.
 */
function refuseRootOnAnotherUsersStateDir(ownership: OwnershipSeen | null): void {
  const dir = ownership?.entries[0];
  if (ownership?.runningAs.uid !== 0 || dir === undefined || dir.uid === 0) return;
  throw new RunnerError(
    "state_dir_owner",
    `refusing to run as root on the state dir ${dir.path}, which belongs to ${dir.owner}: the runner would leave files there (its lock, status socket, job journal, results) that ${dir.owner} cannot use`,
    {
      hint: `run it as ${dir.owner} (its service, or \`sudo -u ${dir.owner} runner start\` with the same options); to run it as root instead, first give the state dir to root: sudo runner repair --state-dir ${dir.path} --owner root`,
    },
  );
}

/**
 * Gives the state dir, what is in it and the work dir to `ctx.owner` (root only): the
 * ownership part of the repair loop alone, as `service install --system` needs it before the
 * service starts as that user. Returns what it did.
 */
export async function giveStateDir(ctx: ObserveContext & ApplyContext): Promise<RepairStep[]> {
  const steps: RepairStep[] = [];
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const ownership = await observeOwnership(ctx, true);
    if (ownership === null) break;
    const todo = planOwnership(ownership).filter((f) => f.fix.kind === "auto");
    if (todo.length === 0) break;
    for (const finding of todo)
      if (finding.fix.kind === "auto")
        steps.push({ finding, ok: true, outcome: await applyFix(finding.fix.action, ctx) });
  }
  return steps;
}

/** Folds steps taken before the main loop into its report. */
export function withEarlierSteps(report: RepairReport, earlier: RepairStep | null): RepairReport {
  if (!earlier) return report;
  return { found: [earlier.finding, ...report.found], steps: [earlier, ...report.steps], remaining: report.remaining };
}
