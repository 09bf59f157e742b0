// runner credentials move --to <file|keychain>: puts the credential in the other store and
// records that in the registration. The usual reason: a service that starts at boot (systemd
// lingering, a LaunchDaemon) runs before any keychain is unlocked and cannot read it.
import { Command, Option } from "commander";
import { ExitCode } from "../errors.js";
import { loadContext, withSettings } from "../cli/context.js";
import { action, print } from "../cli/output.js";
import { moveCredential } from "../credentials/move.js";
import { acquireLock } from "../state/lock.js";
import type { CredentialStoreKind } from "../state/registration.js";

export function defineCredentialsCommand(program: Command): void {
  const credentials = program
    .command("credentials")
    .summary("manage where this runner's credential is kept")
    .description(
      "The credential is kept in the OS keychain or in a 0600 file in the state dir (see --credential-store).\n" +
        "A service that starts at boot cannot read a keychain that is locked until someone logs in: move it to the file.",
    );
  const move = credentials
    .command("move")
    .summary("move the credential to the other store and record it in the registration")
    .addOption(
      new Option("--to <store>", "where the credential goes").choices(["file", "keychain"]).makeOptionMandatory(),
    )
    .addHelpText(
      "after",
      "\nExamples:\n  runner credentials move --to file        # before `sudo runner service install --system`\n" +
        "  runner credentials move --to keychain",
    );
  withSettings(move).action(
    action(async (options: Record<string, unknown> & { to: CredentialStoreKind }) => {
      const ctx = await loadContext(options);
      // Not while a runner uses the state dir: it would go on with the store it read at start.
      const lock = await acquireLock(ctx.files.lock);
      try {
        const result = await moveCredential(ctx.files, options.to);
        if (!result.moved) print(`the credential is already in the ${result.to} store; nothing to do`);
        else print(`✓ moved the credential from the ${result.from} store to the ${result.to} store`);
        if (result.leftBehind) print(`! the old copy could not be removed (${result.leftBehind}); remove it by hand`);
        return ExitCode.OK;
      } finally {
        await lock.release();
      }
    }),
  );
  move.exitOverride();
  credentials.exitOverride();
}
