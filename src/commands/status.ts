// runner status: the local view of this runner (its files), then what the daemon says of itself
// when one runs: its /status, read over the state dir's socket. No network.
import { constants, promises as fs } from "node:fs";
import { Command } from "commander";
import { ExitCode } from "../errors.js";
import { loadContext, STATE_SETTINGS, withSettings } from "../cli/context.js";
import { withExamples } from "../cli/examples.js";
import { action, print, printJson } from "../cli/output.js";
import { inspectLock } from "../state/lock.js";
import { readRegistration } from "../state/registration.js";
import { modeOf } from "../state/files.js";
import { readBlocked } from "../state/blocked.js";
import { accountName, ownerOf } from "../state/owner.js";
import { readDaemonStatus, STATUS_TIMEOUT_MS } from "../status/client.js";
import { daemonSummary } from "../status/summary.js";

export function defineStatusCommand(program: Command): void {
  const command = program
    .command("status")
    .summary(
      "show this runner's local view (registration, credential store, lock owner, a stop for a person) and, when the daemon runs, what it is doing",
    )
    .description(
      "Reads the state dir (no network): whether this runner is registered and with which control plane, where its " +
        "credential is, who holds the lock, and whether the last start stopped for a person; then, when the daemon runs, " +
        "what it says of itself over status.sock (connected?, mode, jobs, workers, outbox, devices, last error).",
    )
    .option("--json", "print as JSON");
  withSettings(command, STATE_SETTINGS);
  withExamples(command, [
    { says: "this runner's local view", line: "runner status" },
    { says: "the same as JSON, for scripts", line: "runner status --json" },
    { says: "the runner in another state dir", line: "runner status --state-dir /srv/runner-2" },
  ]);
  command.action(
    action(async (options: Record<string, unknown>) => {
      const ctx = await loadContext(options);
      const stateDirExists = (await modeOf(ctx.files.stateDir)) !== null;
      // A state dir of another user (a machine-wide runner's, read without sudo) cannot be read:
      // say so, rather than fail with an unexpected error, and still ask the daemon (its socket
      // answers EACCES too, which the daemon line then names).
      const unreadable = stateDirExists ? await unreadableReason(ctx.files.stateDir) : null;
      const readable = stateDirExists && unreadable === null;
      const registration = readable
        ? await readRegistration(ctx.files.registration)
        : unreadable !== null
          ? { kind: "invalid" as const, reason: unreadable }
          : { kind: "missing" as const };
      const lock = readable
        ? await inspectLock(ctx.files.lock)
        : unreadable !== null
          ? { kind: "unknown" as const, reason: unreadable }
          : { kind: "free" as const };
      const reg = registration.kind === "ok" ? registration.value : null;
      const blocked = readable ? await readBlocked(ctx.files.blocked) : null;
      const daemon = stateDirExists
        ? await readDaemonStatus(ctx.files.statusSocket, STATUS_TIMEOUT_MS)
        : { kind: "none" as const, reason: `no daemon is running: no state dir at ${ctx.files.stateDir}` };
      const view = {
        registered: reg !== null,
        registrationProblem: registration.kind === "invalid" ? registration.reason : null,
        runnerId: reg?.runnerId ?? null,
        name: reg?.name ?? null,
        labels: reg?.labels ?? [],
        controlPlaneUrl: reg?.url ?? null,
        credentialStore: reg?.credentialStore ?? null,
        stateDir: ctx.files.stateDir,
        configFile: ctx.configFile,
        lock:
          lock.kind === "free"
            ? { state: "free" as const, pid: null }
            : lock.kind === "held"
              ? { state: "held" as const, pid: lock.owner.pid, since: lock.owner.acquiredAt }
              : lock.kind === "unknown"
                ? { state: "unknown" as const, pid: null, reason: lock.reason }
                : { state: "stale" as const, pid: lock.owner?.pid ?? null, reason: lock.reason },
        /** Set when the last start stopped for a person (exit 78/79); cleared by repair or a clean start. */
        stoppedForOperator: blocked,
        /** The daemon's own /status (README, "Status and metrics"); null when none answers, and `daemonProblem` says why. */
        daemon: daemon.kind === "running" ? daemon.view : null,
        daemonProblem: daemon.kind === "none" ? daemon.reason : null,
      };
      if (options.json) {
        printJson(view);
        return ExitCode.OK;
      }
      if (reg) print(`runner ${reg.runnerId} (${reg.name}) registered with ${reg.url}`);
      else print(view.registrationProblem ? `registration unusable: ${view.registrationProblem}` : "not registered");
      if (reg) print(`  labels: ${reg.labels.join(", ") || "(none)"}\n  credential store: ${reg.credentialStore}`);
      print(`  state dir: ${view.stateDir}`);
      print(`  lock: ${view.lock.state}${view.lock.pid ? ` (pid ${view.lock.pid})` : ""}`);
      if (blocked)
        print(
          `  stopped for a person since ${blocked.at || "?"}: exit ${blocked.exitCode}, ${blocked.reason} (fix it, then \`runner repair\`)`,
        );
      if (daemon.kind === "running") for (const line of daemonSummary(daemon.view)) print(line);
      else print(`daemon: ${daemon.reason}`);
      return ExitCode.OK;
    }),
  );
}

/** Why this user cannot read the state dir's files, or null when it can. */
async function unreadableReason(stateDir: string): Promise<string | null> {
  try {
    await fs.access(stateDir, constants.R_OK | constants.X_OK);
    return null;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "EACCES";
    const owner = await ownerOf(stateDir);
    const whose = owner === null ? "" : ` (it belongs to ${await accountName(owner)})`;
    return `cannot read the state dir ${stateDir}: ${code}${whose}; run runner status as its owner, or with sudo`;
  }
}
