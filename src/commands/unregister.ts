// runner unregister: tell the control plane to forget this runner, then remove the credential
// and the registration here. The outbox is kept: results in it may still matter to someone.
import { promises as fs } from "node:fs";
import { Command } from "commander";
import { ExitCode, RunnerError } from "../errors.js";
import { unregister } from "../api-client/runner-api.js";
import { loadContext, withSettings } from "../cli/context.js";
import { action, print } from "../cli/output.js";
import { openStore } from "../credentials/select.js";
import { acquireLock } from "../state/lock.js";
import { readRegistration } from "../state/registration.js";
import { identityBody } from "../api-client/identity.js";

export function defineUnregisterCommand(program: Command): void {
  const command = program
    .command("unregister")
    .summary("remove this runner from the control plane and forget its credential")
    .option("--local-only", "do not contact the control plane (an admin deletes the runner there)");
  withSettings(command).action(
    action(async (options: Record<string, unknown> & { localOnly?: boolean }) => {
      const ctx = await loadContext(options);
      const read = await readRegistration(ctx.files.registration);
      if (read.kind !== "ok") {
        throw new RunnerError(
          "not_registered",
          read.kind === "missing" ? "this runner is not registered" : `registration.json is unusable: ${read.reason}`,
          {
            hint: read.kind === "missing" ? undefined : "run `runner repair` first",
          },
        );
      }
      const registration = read.value;
      const lock = await acquireLock(ctx.files.lock);
      try {
        const store = openStore(registration.credentialStore, ctx.files);
        const credential = await store.read();
        if (!options.localOnly && credential.kind === "ok") {
          try {
            await unregister(
              { url: registration.url, timeoutMs: ctx.controlPlane.requestTimeoutMs },
              credential.value.credential,
              identityBody({ runnerId: registration.runnerId }),
            );
            print(`the control plane at ${registration.url} removed runner ${registration.runnerId}`);
          } catch (error) {
            // Already revoked or deleted there: nothing left to remove remotely.
            if (!(error instanceof RunnerError) || !["credential_revoked", "runner_deleted"].includes(error.code))
              throw error;
            print(`the control plane no longer knows this credential (${error.code}); removing it locally`);
          }
        }
        await store.remove();
        await fs.rm(ctx.files.registration, { force: true });
        print(
          `forgot runner ${registration.runnerId}; the credential is gone from the ${registration.credentialStore} store`,
        );
        return ExitCode.OK;
      } finally {
        await lock.release();
      }
    }),
  );
}
