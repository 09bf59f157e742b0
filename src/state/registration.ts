// The runner's registration: who it is and where its credential lives (never the credential).
import { z } from "zod";
import { labelsSchema, runnerIdSchema } from "../protocol/http.js";
import { readJsonFile, writeJsonAtomic, type JsonRead } from "./files.js";

export const credentialStoreKindSchema = z.enum(["keychain", "file"]);
export type CredentialStoreKind = z.infer<typeof credentialStoreKindSchema>;

export const registrationSchema = z.object({
  version: z.literal(1),
  runnerId: runnerIdSchema,
  url: z.string().url(),
  name: z.string().min(1),
  labels: labelsSchema,
  /** Recorded so that a keychain that loses the entry is reported as such, not re-registered silently. */
  credentialStore: credentialStoreKindSchema,
  hostFingerprint: z.string().regex(/^[a-f0-9]{64}$/),
  registeredAt: z.string(),
});
export type Registration = z.infer<typeof registrationSchema>;

export function readRegistration(file: string): Promise<JsonRead<Registration>> {
  return readJsonFile(file, registrationSchema);
}

export function writeRegistration(file: string, registration: Registration): Promise<void> {
  return writeJsonAtomic(file, registrationSchema.parse(registration));
}
