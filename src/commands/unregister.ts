// runner unregister: tell the control plane to forget this runner, then remove the credential
// and the registration here. The outbox is kept: results in it may still matter to someone.
import { Command } from "commander";
import { ExitCode } from "../errors.js";
import { CONTROL_PLANE_SETTINGS, loadContext, STATE_SETTINGS, withSettings } from "../cli/context.js";
import { withExamples } from "../cli/examples.js";
import { action, print } from "../cli/output.js";
import { acquireLock } from "../state/lock.js";
import { forgetRunner } from "../startup/unregister.js";

export function defineUnregisterCommand(program: Command): void {
  const command = program
    .command("unregister")
    .summary("remove this runner from the control plane and forget its credential")
    .description(
      "Asks the control plane to remove this runner, then deletes its credential and registration here. The outbox of " +
        "results not yet delivered is kept.",
    )
    .option("--local-only", "do not contact the control plane (an admin deletes the runner there)");
  withSettings(command, [...STATE_SETTINGS, ...CONTROL_PLANE_SETTINGS]);
  withExamples(command, [
    { says: "remove this runner here and on the control plane", line: "runner unregister" },
    {
      says: "forget the runner here only (the control plane is gone, or an admin removes it there)",
      line: "runner unregister --local-only",
    },
  ]);
  command.action(
    action(async (options: Record<string, unknown> & { localOnly?: boolean }) => {
      const ctx = await loadContext(options);
      const lock = await acquireLock(ctx.files.lock);
      try {
        const lines = await forgetRunner(ctx.files, {
          localOnly: options.localOnly === true,
          requestTimeoutMs: ctx.controlPlane.requestTimeoutMs,
          proxy: ctx.controlPlane.proxy,
          insecurePlaintext: ctx.controlPlane.insecurePlaintext,
        });
        for (const line of lines) print(line);
        return ExitCode.OK;
      } finally {
        await lock.release();
      }
    }),
  );
}
