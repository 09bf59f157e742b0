// Moves the runner's credential from the store its registration names to the other one (a
// keychain that a service started at boot cannot unlock → the 0600 file, or back). The order
// keeps a crash at any point harmless: the new copy is written and read back first, the
// registration then names the new store (the one step that switches), and only then is the
// old copy removed.
import { RunnerError } from "../errors.js";
import type { StateFiles } from "../config/paths.js";
import { readRegistration, writeRegistration, type CredentialStoreKind } from "../state/registration.js";
import { openStore } from "./select.js";

export interface CredentialMove {
  from: CredentialStoreKind;
  to: CredentialStoreKind;
  /** False when the credential was already in `to`. */
  moved: boolean;
  /** Set when the old copy could not be removed (the move itself is done). */
  leftBehind?: string;
}

export async function moveCredential(files: StateFiles, to: CredentialStoreKind): Promise<CredentialMove> {
  const read = await readRegistration(files.registration);
  if (read.kind !== "ok")
    throw new RunnerError(
      "not_registered",
      read.kind === "missing" ? "this runner is not registered" : `registration.json is unusable: ${read.reason}`,
      { hint: read.kind === "missing" ? undefined : "run `runner repair` first" },
    );
  const registration = read.value;
  const from = registration.credentialStore;
  if (from === to) return { from, to, moved: false };
  const source = openStore(from, files);
  const stored = await source.read();
  if (stored.kind !== "ok")
    throw new RunnerError(
      stored.kind === "unavailable" ? "keychain_unavailable" : "credential_missing",
      `the credential cannot be read from ${source.location}: ${stored.kind === "missing" ? "it is not there" : stored.reason}`,
      { hint: stored.kind === "unavailable" ? "unlock the keychain and try again" : "run `runner repair`" },
    );
  const target = openStore(to, files);
  await target.write(stored.value);
  const back = await target.read();
  if (back.kind !== "ok" || back.value.credential !== stored.value.credential)
    throw new RunnerError("credential_missing", `the credential written to ${target.location} did not read back`, {
      hint: `the registration still uses ${source.location}; nothing was switched`,
    });
  await writeRegistration(files.registration, { ...registration, credentialStore: to });
  try {
    await source.remove();
    return { from, to, moved: true };
  } catch (error) {
    return { from, to, moved: true, leftBehind: `${source.location}: ${(error as Error).message}` };
  }
}
