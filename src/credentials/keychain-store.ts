// Credential in the OS keychain (macOS Keychain, Secret Service on Linux, Windows Credential
// Manager) through @napi-rs/keyring. One entry per state dir, so several runners on one
// machine do not share a credential. On Linux the store is pinned to the Secret Service: the
// library's silent fallback, the kernel keyring, does not survive a reboot.
import type { AsyncEntry } from "@napi-rs/keyring";
import { RunnerError } from "../errors.js";
import { parseStoredCredential, type CredentialRead, type CredentialStore, type StoredCredential } from "./store.js";

export const KEYCHAIN_SERVICE = "runner";
const CALL_TIMEOUT_MS = 5_000;

export class KeychainCredentialStore implements CredentialStore {
  readonly kind = "keychain" as const;
  readonly location: string;
  private entry: Promise<AsyncEntry> | null = null;

  constructor(readonly account: string) {
    this.location = `the ${keychainName()} (service "${KEYCHAIN_SERVICE}", account "${account}")`;
  }

  async read(): Promise<CredentialRead> {
    try {
      const text = await this.call((entry, signal) => entry.getPassword(signal));
      return text === null ? { kind: "missing" } : parseStoredCredential(text);
    } catch (error) {
      return { kind: "unavailable", reason: reasonOf(error) };
    }
  }

  async write(value: StoredCredential): Promise<void> {
    try {
      await this.call((entry, signal) => entry.setPassword(JSON.stringify(value), signal));
    } catch (error) {
      throw unavailable(error);
    }
  }

  async remove(): Promise<boolean> {
    try {
      return await this.call((entry, signal) => entry.deleteCredential(signal));
    } catch (error) {
      throw unavailable(error);
    }
  }

  /** Writes, reads back and deletes a probe entry: the only sure test that the keychain works. */
  static async probe(): Promise<{ usable: true } | { usable: false; reason: string }> {
    const probe = new KeychainCredentialStore(`probe-${process.pid}-${Date.now()}`);
    try {
      await probe.call((entry, signal) => entry.setPassword("probe", signal));
      const back = await probe.call((entry, signal) => entry.getPassword(signal));
      await probe.call((entry, signal) => entry.deleteCredential(signal));
      return back === "probe" ? { usable: true } : { usable: false, reason: "a value written could not be read back" };
    } catch (error) {
      return { usable: false, reason: reasonOf(error) };
    }
  }

  private async call<T>(fn: (entry: AsyncEntry, signal: AbortSignal) => Promise<T>): Promise<T> {
    // The native module is loaded on first use: a runner using the file store never loads it.
    // Creating the entry throws when there is no session bus; every call then reports that.
    this.entry ??= import("@napi-rs/keyring").then(
      ({ AsyncEntry }) => new AsyncEntry(KEYCHAIN_SERVICE, this.account, { linux: { store: "secret-service" } }),
    );
    const signal = AbortSignal.timeout(CALL_TIMEOUT_MS);
    return await fn(await this.entry, signal);
  }
}

export function keychainName(): string {
  if (process.platform === "darwin") return "macOS keychain";
  if (process.platform === "win32") return "Windows Credential Manager";
  return "Secret Service keychain";
}

function reasonOf(error: unknown): string {
  if (process.platform === "linux" && !process.env.DBUS_SESSION_BUS_ADDRESS) {
    return `the ${keychainName()} is not usable: there is no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)`;
  }
  const message = error instanceof Error ? error.message : String(error);
  if (/timed? ?out|abort/i.test(message))
    return `the ${keychainName()} did not answer within ${CALL_TIMEOUT_MS / 1000} s`;
  return `the ${keychainName()} is not usable: ${message}`;
}

function unavailable(error: unknown): RunnerError {
  return new RunnerError("keychain_unavailable", reasonOf(error), {
    cause: error,
    hint: "unlock or start the keychain, or use --credential-store file",
  });
}
