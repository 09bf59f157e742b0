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
/**
 * A module job's handler name: the name a job asks for (channel.ts) and the runner's config maps
 * to a local module (config/settings.ts). One rule for both, so no name the config accepts is
 * one a job cannot ask for.
 */
export const handlerNameSchema = z
  .string()
  .regex(/^[A-Za-z0-9._-]{1,128}$/, "a handler name is 1-128 letters, digits, '.', '_' and '-'");
export const runnerIdSchema = z.string().regex(/^rnr_[A-Za-z0-9]{16,64}$/, "a runner id (rnr_...)");
