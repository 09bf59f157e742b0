// Field schemas shared by the HTTP API and the channel (kept apart so neither imports the other).
import { z } from "zod";

export const nameSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, "letters, digits, '.', '_' or '-'");
const label = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/, "letters, digits, '.', '_', ':' or '-'");
export const labelsSchema = z.array(label).max(64);
export const runnerIdSchema = z.string().regex(/^rnr_[A-Za-z0-9]{16,64}$/, "a runner id (rnr_...)");
