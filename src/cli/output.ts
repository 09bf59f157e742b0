// Command output for people (stdout) and the one place errors become an exit code.
import { describeError, exitCodeFor, ExitCode } from "../errors.js";
import type { Finding } from "../startup/plan.js";
import type { RepairReport } from "../startup/check.js";

export function print(line = ""): void {
  process.stdout.write(line + "\n");
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + "\n");
}

/** Wraps a verb's action: its return value or its error becomes the process exit code. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<number>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      process.exitCode = await fn(...args);
    } catch (error) {
      process.stderr.write(`runner: ${describeError(error)}\n`);
      process.exitCode = exitCodeFor(error);
    }
  };
}

export function describeFinding(finding: Finding): string[] {
  const lines = [`✗ ${finding.problem} [${finding.code}]`];
  const fix = finding.fix;
  if (fix.kind === "auto") lines.push(`    fix: ${fix.description}`);
  else if (fix.kind === "retry") lines.push(`    wait: ${fix.description}`);
  else {
    lines.push(`    needs an operator: ${fix.description}`);
    if (fix.command) lines.push(`    run: ${fix.command}`);
  }
  return lines;
}

export function printRepairReport(report: RepairReport): void {
  if (report.found.length === 0) {
    print("✓ nothing to repair");
    return;
  }
  for (const step of report.steps) {
    print(`${step.ok ? "✓" : "✗"} ${step.finding.problem} [${step.finding.code}]`);
    print(`    fix: ${step.finding.fix.kind === "auto" ? step.finding.fix.description : ""}`);
    print(`    ${step.ok ? "done" : "failed"}: ${step.outcome}`);
  }
  for (const finding of report.remaining) describeFinding(finding).forEach((l) => print(l));
  print(report.remaining.length === 0 ? "✓ healthy" : `${report.remaining.length} problem(s) remain`);
}

/** The exit code for what a repair left behind: operator work beats waiting. */
export function exitCodeForRemaining(remaining: Finding[]): number {
  if (remaining.length === 0) return ExitCode.OK;
  if (remaining.some((f) => f.code === "upgrade_required")) return ExitCode.UPGRADE_REQUIRED;
  if (remaining.some((f) => f.fix.kind === "operator" || f.fix.kind === "auto")) return ExitCode.NEEDS_OPERATOR;
  return ExitCode.UNAVAILABLE;
}
