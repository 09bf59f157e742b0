// runner unregister: tell the control plane to forget this runner, then remove the credential
// and the registration here. The outbox is kept: results in it may still matter to someone.
import { Command } from "commander";
import { ExitCode } from "../errors.js";
import { loadContext, withSettings } from "../cli/context.js";
import { action, print } from "../cli/output.js";
import { acquireLock } from "../state/lock.js";
import { forgetRunner } from "../startup/unregister.js";

export function defineUnregisterCommand(program: Command): void {
  const command = program
    .command("unregister")
    .summary("remove this runner from the control plane and forget its credential")
    .option("--local-only", "do not contact the control plane (an admin deletes the runner there)");
  withSettings(command).action(
    action(async (options: Record<string, unknown> & { localOnly?: boolean }) => {
      const ctx = await loadContext(options);
      const lock = await acquireLock(ctx.files.lock);
      try {
        const lines = await forgetRunner(ctx.files, {
          localOnly: options.localOnly === true,
          requestTimeoutMs: ctx.controlPlane.requestTimeoutMs,
          proxy: ctx.controlPlane.proxy,
        });
        for (const line of lines) print(line);
        return ExitCode.OK;
      } finally {
        await lock.release();
      }
    }),
  );
}
