// Chooses the credential store. `auto` prefers the keychain when a probe shows it works and
// says which it chose and why. Once a runner is registered, the store it used is recorded
// in its registration and that store is used from then on, whatever `auto` would pick now.
import { RunnerError } from "../errors.js";
import type { CredentialStoreKind } from "../state/registration.js";
import { FileCredentialStore } from "./file-store.js";
import { KEYCHAIN_HINT, KeychainCredentialStore } from "./keychain-store.js";
import type { CredentialStore } from "./store.js";

export interface StoreChoice {
  store: CredentialStore;
  /** One sentence for the log: which store and why. */
  why: string;
}

export function openStore(
  kind: CredentialStoreKind,
  paths: { stateDir: string; credentialFile: string },
): CredentialStore {
  return kind === "keychain"
    ? new KeychainCredentialStore(paths.stateDir)
    : new FileCredentialStore(paths.credentialFile);
}

export async function chooseStore(
  setting: "auto" | CredentialStoreKind,
  paths: { stateDir: string; credentialFile: string },
): Promise<StoreChoice> {
  if (setting === "file") return { store: openStore("file", paths), why: "credential store set to file" };
  const probe = await KeychainCredentialStore.probe();
  if (setting === "keychain") {
    if (!probe.usable) {
      throw new RunnerError("keychain_unavailable", `credential store is set to keychain, but ${probe.reason}`, {
        hint: KEYCHAIN_HINT,
      });
    }
    return { store: openStore("keychain", paths), why: "credential store set to keychain" };
  }
  if (probe.usable)
    return { store: openStore("keychain", paths), why: "the OS keychain works, so it holds the credential" };
  return { store: openStore("file", paths), why: `using a 0600 file because ${probe.reason}` };
}
