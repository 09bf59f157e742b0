// Forgetting this runner: the control plane removes it, then the credential and the
// registration go here. The outbox is kept: results in it may still matter to someone. Used by
// `runner unregister` and by an ephemeral runner (`start --once`) once its job is done; the
// caller holds the state dir's lock.
import { promises as fs } from "node:fs";
import { unregister } from "../api-client/runner-api.js";
import { identityBody } from "../api-client/identity.js";
import type { StateFiles } from "../config/paths.js";
import { openStore } from "../credentials/select.js";
import { RunnerError } from "../errors.js";
import { readRegistration } from "../state/registration.js";
import type { ProxyConfig } from "../net/proxy.js";

/** What happened, a line each, for people. */
export async function forgetRunner(
  files: StateFiles,
  options: { localOnly: boolean; requestTimeoutMs: number; proxy: ProxyConfig; insecurePlaintext: boolean },
): Promise<string[]> {
  const read = await readRegistration(files.registration);
  if (read.kind !== "ok") {
    throw new RunnerError(
      "not_registered",
      read.kind === "missing" ? "this runner is not registered" : `registration.json is unusable: ${read.reason}`,
      { hint: read.kind === "missing" ? undefined : "run `runner repair` first" },
    );
  }
  const registration = read.value;
  const lines: string[] = [];
  const store = openStore(registration.credentialStore, files);
  const credential = await store.read();
  if (!options.localOnly && credential.kind === "ok") {
    try {
      await unregister(
        {
          url: registration.url,
          timeoutMs: options.requestTimeoutMs,
          proxy: options.proxy,
          insecurePlaintext: options.insecurePlaintext,
        },
        credential.value.credential,
        identityBody({ runnerId: registration.runnerId }),
      );
      lines.push(`the control plane at ${registration.url} removed runner ${registration.runnerId}`);
    } catch (error) {
      // Already revoked or deleted there: nothing left to remove remotely.
      if (!(error instanceof RunnerError) || !["credential_revoked", "runner_deleted"].includes(error.code))
        throw error;
      lines.push(`the control plane no longer knows this credential (${error.code}); removing it locally`);
    }
  }
  await store.remove();
  await fs.rm(files.registration, { force: true });
  lines.push(
    `forgot runner ${registration.runnerId}; the credential is gone from the ${registration.credentialStore} store`,
  );
  return lines;
}
