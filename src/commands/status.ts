// runner status: the local view of this runner. Reads only local files; no network.
import { Command } from "commander";
import { ExitCode } from "../errors.js";
import { loadContext, STATE_SETTINGS, withSettings } from "../cli/context.js";
import { withExamples } from "../cli/examples.js";
import { action, print, printJson } from "../cli/output.js";
import { inspectLock } from "../state/lock.js";
import { readRegistration } from "../state/registration.js";
import { modeOf } from "../state/files.js";
import { readBlocked } from "../state/blocked.js";

export function defineStatusCommand(program: Command): void {
  const command = program
    .command("status")
    .summary("show this runner's local view: registration, credential store, lock owner, a stop for a person")
    .description(
      "Reads the state dir only (no network): whether this runner is registered and with which control plane, where its " +
        "credential is, who holds the lock, and whether the last start stopped for a person.",
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
      const registration = stateDirExists
        ? await readRegistration(ctx.files.registration)
        : { kind: "missing" as const };
      const lock = stateDirExists ? await inspectLock(ctx.files.lock) : { kind: "free" as const };
      const reg = registration.kind === "ok" ? registration.value : null;
      const blocked = stateDirExists ? await readBlocked(ctx.files.blocked) : null;
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
              : { state: "stale" as const, pid: lock.owner?.pid ?? null, reason: lock.reason },
        /** Set when the last start stopped for a person (exit 78/79); cleared by repair or a clean start. */
        stoppedForOperator: blocked,
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
      return ExitCode.OK;
    }),
  );
}
