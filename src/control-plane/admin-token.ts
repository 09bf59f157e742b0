// The admin token's hash as this control plane checks it. Every admin request needs it, and
// it changes only when a control plane starts with `--admin-token-file` (control-plane.ts),
// so it is read from the store once and kept: a database round trip less per admin request.
// A replica that stores a new hash says so on the replicas' bus (`admin_token`); every other
// replica forgets its copy on hearing it, and after its listener reconnected (the signal may
// have been said meanwhile), so a replaced token stops working everywhere as soon as the bus
// delivers the signal.
import { ADMIN_TOKEN_HASH_SETTING } from "./context.js";
import type { ControlPlaneStore } from "./store/contract.js";

export class AdminTokenHash {
  private cached: Promise<string | undefined> | undefined;

  constructor(private readonly store: Pick<ControlPlaneStore, "getSetting">) {}

  /** The stored hash (undefined when none is stored), read from the store only when not kept. */
  read(): Promise<string | undefined> {
    if (this.cached) return this.cached;
    const reading = this.store.getSetting(ADMIN_TOKEN_HASH_SETTING).then(
      (hash) => {
        // None stored yet is not kept: a replica starting at once may be about to store it.
        if (hash === undefined && this.cached === reading) this.cached = undefined;
        return hash;
      },
      (error: unknown) => {
        // A failed read is not kept either: the next request reads again.
        if (this.cached === reading) this.cached = undefined;
        throw error;
      },
    );
    this.cached = reading;
    return reading;
  }

  /**
   * The hash may have changed: the next request reads it again. A read already on its way
   * may still answer the requests that were waiting for it (they arrived before the change
   * was heard); it is not kept.
   */
  forget(): void {
    this.cached = undefined;
  }
}
