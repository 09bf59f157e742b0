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
/**
 * A string of `min` to `max` UTF-16 code units without the NUL character (U+0000). A job's
 * argument, variable or path cannot hold one (the OS would cut it or spawn() would throw), and
 * PostgreSQL's TEXT cannot either (SQLite's can): every string that a runner or an admin sends
 * and that the control plane keeps as text or looks up is declared with this, so that both
 * engines answer a NUL alike, with the protocol's error for invalid input (PROTOCOL.md,
 * "Strings and the NUL character").
 */
export const withoutNul = (what: string, max: number, min = 0) =>
  z
    .string()
    .min(min)
    .max(max)
    .refine((value) => !value.includes("\0"), `${what} must not contain a NUL character`);

/** The most jobs a runner may run at once: `hello.capacity`'s maximum and the `capacity` setting's. */
export const MAX_CAPACITY = 1024;

export const runnerIdSchema = z.string().regex(/^rnr_[A-Za-z0-9]{16,64}$/, "a runner id (rnr_...)");
