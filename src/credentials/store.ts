// The credential-store interface. What is stored is the runner credential together with the
// runner id and control-plane URL it belongs to, so that a lost registration file can be
// rebuilt from the store alone.
import { z } from "zod";
import { runnerIdSchema } from "../protocol/http.js";
import type { CredentialStoreKind } from "../state/registration.js";

export const storedCredentialSchema = z.object({
  v: z.literal(1),
  runnerId: runnerIdSchema,
  url: z.string().url(),
  credential: z.string().min(20),
});
export type StoredCredential = z.infer<typeof storedCredentialSchema>;

export type CredentialRead =
  | { kind: "ok"; value: StoredCredential }
  | { kind: "missing" }
  | { kind: "invalid"; reason: string }
  | { kind: "unavailable"; reason: string };

export interface CredentialStore {
  readonly kind: CredentialStoreKind;
  /** Where, for people: "the Secret Service keychain", "/path/credential". */
  readonly location: string;
  read(): Promise<CredentialRead>;
  write(value: StoredCredential): Promise<void>;
  /** True when something was deleted. */
  remove(): Promise<boolean>;
}

export function parseStoredCredential(text: string): CredentialRead {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { kind: "invalid", reason: "the stored credential is not valid JSON" };
  }
  const result = storedCredentialSchema.safeParse(parsed);
  // The reason must not quote the value: it is a secret.
  return result.success
    ? { kind: "ok", value: result.data }
    : { kind: "invalid", reason: "the stored credential has the wrong shape" };
}
