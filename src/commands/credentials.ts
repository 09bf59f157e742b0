// runner credentials move --to <file|keychain>: puts the credential in the other store and
// records that in the registration. The usual reason: a service that starts at boot (systemd
// lingering, a LaunchDaemon) runs before any keychain is unlocked and cannot read it.
import { Command, Option } from "commander";
import { ExitCode } from "../errors.js";
import { loadContext, STATE_SETTINGS, withSettings } from "../cli/context.js";
import { withExamples } from "../cli/examples.js";
import { action, print } from "../cli/output.js";
import { describeMove, moveCredential } from "../credentials/move.js";
import type { CredentialStoreKind } from "../state/registration.js";

export function defineCredentialsCommand(program: Command): void {
  const credentials = program
    .command("credentials")
    .summary("manage where this runner's credential is kept")
    .description(
      "The credential is kept in the OS keychain or in a 0600 file in the state dir (`runner register --credential-store` chooses). " +
        "A service that starts at boot cannot read a keychain that is locked until someone logs in: move it to the file.",
    );
  const move = credentials
    .command("move")
    .summary("move the credential to the other store and record it in the registration")
    .addOption(
      new Option("--to <store>", "where the credential goes").choices(["file", "keychain"]).makeOptionMandatory(),
    );
  withSettings(move, STATE_SETTINGS);
  withExamples(move, [
    {
      says: "before a service that starts at boot, when no one has logged in to unlock the keychain",
      line: "runner credentials move --to file",
    },
    { says: "the machine-wide runner's credential", line: "sudo runner credentials move --system --to file" },
    { says: "back into the OS keychain", line: "runner credentials move --to keychain" },
  ]);
  move.action(
    action(async (options: Record<string, unknown> & { to: CredentialStoreKind }) => {
      const ctx = await loadContext(options);
      for (const line of describeMove(await moveCredential(ctx.files, options.to))) print(line);
      return ExitCode.OK;
    }),
  );
  move.exitOverride();
  credentials.exitOverride();
}
