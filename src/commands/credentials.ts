// runner credentials move --to <file|keychain>: puts the credential in the other store and
// records that in the registration. The usual reason: a service that starts at boot (systemd
// lingering, a LaunchDaemon) runs before any keychain is unlocked and cannot read it.
import { Command, Option } from "commander";
import { ExitCode } from "../errors.js";
import { loadContext, withSettings } from "../cli/context.js";
import { action, print } from "../cli/output.js";
import { describeMove, moveCredential } from "../credentials/move.js";
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
      for (const line of describeMove(await moveCredential(ctx.files, options.to))) print(line);
      return ExitCode.OK;
    }),
  );
  move.exitOverride();
  credentials.exitOverride();
}
