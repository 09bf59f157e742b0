// Credential in the OS keychain (macOS Keychain, Secret Service on Linux, Windows Credential
// Manager) through @napi-rs/keyring. One entry per state dir, so several runners on one
// machine do not share a credential. On Linux the store is pinned to the Secret Service: the
// library's silent fallback, the kernel keyring, does not survive a reboot.
import type { AsyncEntry } from "@napi-rs/keyring";
import { RunnerError } from "../errors.js";
import { parseStoredCredential, type CredentialRead, type CredentialStore, type StoredCredential } from "./store.js";

export const KEYCHAIN_SERVICE = "runner";
const CALL_TIMEOUT_MS = 5_000;
/** What a person can do about a keychain that does not work. */
export const KEYCHAIN_HINT = "unlock or start the keychain, or use --credential-store file";

/** The calls this store makes on a keychain entry (@napi-rs/keyring's AsyncEntry has them). */
export type KeychainEntry = Pick<AsyncEntry, "getPassword" | "setPassword" | "deleteCredential">;

export interface KeychainOptions {
  timeoutMs: number;
  /** Opens the entry; by default the native module's, loaded on first use. */
  open: (account: string) => Promise<KeychainEntry>;
}

const nativeEntry = (account: string): Promise<KeychainEntry> =>
  // The native module is loaded on first use: a runner using the file store never loads it.
  // Creating the entry throws when there is no session bus; every call then reports that.
  import("@napi-rs/keyring").then(
    ({ AsyncEntry }) => new AsyncEntry(KEYCHAIN_SERVICE, account, { linux: { store: "secret-service" } }),
  );

class KeychainTimeout extends Error {}

export class KeychainCredentialStore implements CredentialStore {
  readonly kind = "keychain" as const;
  readonly location: string;
  private entry: Promise<KeychainEntry> | null = null;
  private readonly options: KeychainOptions;

  constructor(
    readonly account: string,
    options: Partial<KeychainOptions> = {},
  ) {
    this.location = `the ${keychainName()} (service "${KEYCHAIN_SERVICE}", account "${account}")`;
    this.options = { timeoutMs: CALL_TIMEOUT_MS, open: nativeEntry, ...options };
  }

  async read(): Promise<CredentialRead> {
    try {
      const text = await this.call((entry, signal) => entry.getPassword(signal));
      return text === null ? { kind: "missing" } : parseStoredCredential(text);
    } catch (error) {
      return { kind: "unavailable", reason: this.reasonOf(error) };
    }
  }

  async write(value: StoredCredential): Promise<void> {
    try {
      await this.call((entry, signal) => entry.setPassword(JSON.stringify(value), signal));
    } catch (error) {
      throw this.unavailable(error);
    }
  }

  async remove(): Promise<boolean> {
    try {
      return await this.call((entry, signal) => entry.deleteCredential(signal));
    } catch (error) {
      throw this.unavailable(error);
    }
  }

  /** Writes, reads back and deletes a probe entry: the only sure test that the keychain works. */
  static async probe(
    options: Partial<KeychainOptions> = {},
  ): Promise<{ usable: true } | { usable: false; reason: string }> {
    const probe = new KeychainCredentialStore(`probe-${process.pid}-${Date.now()}`, options);
    try {
      await probe.call((entry, signal) => entry.setPassword("probe", signal));
      const back = await probe.call((entry, signal) => entry.getPassword(signal));
      await probe.call((entry, signal) => entry.deleteCredential(signal));
      return back === "probe" ? { usable: true } : { usable: false, reason: "a value written could not be read back" };
    } catch (error) {
      return { usable: false, reason: probe.reasonOf(error) };
    }
  }

  private reasonOf(error: unknown): string {
    const message = error instanceof Error ? error.message : String(error);
    if (error instanceof KeychainTimeout || /timed? ?out|abort/i.test(message))
      return `the ${keychainName()} did not answer within ${this.options.timeoutMs / 1000} s (locked, or waiting on a prompt nobody sees?)`;
    if (process.platform === "linux" && !process.env.DBUS_SESSION_BUS_ADDRESS) {
      return `the ${keychainName()} is not usable: there is no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)`;
    }
    return `the ${keychainName()} is not usable: ${message}`;
  }

  private unavailable(error: unknown): RunnerError {
    return new RunnerError("keychain_unavailable", this.reasonOf(error), { cause: error, hint: KEYCHAIN_HINT });
  }

  /**
   * One keychain call, given up after the timeout whatever the native side does: its abort
   * signal only stops work not yet started, and a keychain waiting on a prompt or a locked
   * login keychain never looks at it. The call may go on in the background; its answer is
   * dropped.
   */
  private async call<T>(fn: (entry: KeychainEntry, signal: AbortSignal) => Promise<T>): Promise<T> {
    this.entry ??= this.options.open(this.account);
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        controller.abort();
        reject(new KeychainTimeout(`no answer within ${this.options.timeoutMs} ms`));
      }, this.options.timeoutMs);
    });
    try {
      return await Promise.race([this.entry.then((entry) => fn(entry, controller.signal)), deadline]);
    } finally {
      clearTimeout(timer);
    }
  }
}

export function keychainName(): string {
  if (process.platform === "darwin") return "macOS keychain";
  if (process.platform === "win32") return "Windows Credential Manager";
  return "Secret Service keychain";
}
