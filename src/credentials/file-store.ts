// Credential in a file only its owner can read (0600), written atomically.
import { promises as fs } from "node:fs";
import { SECRET_FILE_MODE, readStateFile, writeFileAtomic } from "../state/files.js";
import { parseStoredCredential, type CredentialRead, type CredentialStore, type StoredCredential } from "./store.js";

export class FileCredentialStore implements CredentialStore {
  readonly kind = "file" as const;
  constructor(readonly location: string) {}

  async read(): Promise<CredentialRead> {
    // Never through a link: a credential file that points elsewhere is not this runner's.
    try {
      const text = await readStateFile(this.location);
      return text === null ? { kind: "missing" } : parseStoredCredential(text);
    } catch (error) {
      return {
        kind: "unavailable",
        reason: `cannot read ${this.location}: ${(error as NodeJS.ErrnoException).code ?? "error"}`,
      };
    }
  }

  async write(value: StoredCredential): Promise<void> {
    await writeFileAtomic(this.location, JSON.stringify(value), SECRET_FILE_MODE);
  }

  async remove(): Promise<boolean> {
    try {
      await fs.unlink(this.location);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw error;
    }
  }
}
