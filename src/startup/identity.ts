// The runner's identity once the checks have passed: its registration and its credential.
import { RunnerError } from "../errors.js";
import type { StateFiles } from "../config/paths.js";
import { openStore } from "../credentials/select.js";
import { readRegistration, type Registration } from "../state/registration.js";

export async function loadIdentity(files: StateFiles): Promise<{ registration: Registration; credential: string }> {
  const read = await readRegistration(files.registration);
  if (read.kind !== "ok")
    throw new RunnerError("not_registered", "registration.json is missing or unusable", {
      hint: "run `runner repair`",
    });
  const stored = await openStore(read.value.credentialStore, files).read();
  if (stored.kind !== "ok")
    throw new RunnerError(
      "credential_missing",
      `the credential cannot be read from the ${read.value.credentialStore} store`,
      { hint: "run `runner repair`" },
    );
  return { registration: read.value, credential: stored.value.credential };
}
