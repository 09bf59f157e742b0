// Pages of the admin lists (PROTOCOL.md, "Pages"): `?limit=` (a default and a maximum per
// list) and `?after=<cursor>`, where the cursor is opaque to the caller: base64url of the JSON
// key of the last item given (a job id, a runner name, a runner and device id, an attempt and
// seq), so that a list walked page by page gives every item once, in order, even while items
// are added. A page is fetched with one row more than asked, to know whether another follows.
import { z } from "zod";
import { HttpError } from "./router.js";
import { withoutNul } from "../../protocol/common.js";

export interface PageRule {
  /** Items when `limit` is absent. */
  default: number;
  /** The largest `limit` accepted. */
  max: number;
}

/** Jobs, runners and devices. */
export const LIST_PAGE: PageRule = { default: 100, max: 1000 };
/** Log chunks: also cut at LOG_PAGE_MAX_BYTES of `data` (a chunk can be a whole frame). */
export const LOG_PAGE: PageRule = { default: 1000, max: 10_000 };
/** A log page stops once its chunks' data passes this many UTF-8 bytes (after at least one chunk). */
export const LOG_PAGE_MAX_BYTES = 4 * 1024 * 1024;

export interface PageRequest<Key> {
  limit: number;
  after: Key | undefined;
}

/** Reads `limit` and `after` from the query; a bad value is 400 with the parameter's name. */
export function parsePage<S extends z.ZodTypeAny>(
  query: URLSearchParams,
  rule: PageRule,
  keySchema: S,
): PageRequest<z.output<S>> {
  const rawLimit = query.get("limit");
  let limit = rule.default;
  if (rawLimit !== null) {
    if (!/^\d+$/.test(rawLimit) || Number(rawLimit) < 1 || Number(rawLimit) > rule.max)
      throw new HttpError(400, "bad_request", `limit: a whole number from 1 to ${rule.max}`);
    limit = Number(rawLimit);
  }
  const rawAfter = query.get("after");
  if (rawAfter === null) return { limit, after: undefined };
  const key = keySchema.safeParse(decodeKey(rawAfter));
  if (!key.success)
    throw new HttpError(400, "bad_request", "after: not a cursor of this list (pass back a nextCursor as given)");
  return { limit, after: key.data as z.output<S> };
}

function decodeKey(cursor: string): unknown {
  try {
    return JSON.parse(Buffer.from(cursor, "base64url").toString("utf8")) as unknown;
  } catch {
    return undefined;
  }
}

export function encodeCursor(key: unknown): string {
  return Buffer.from(JSON.stringify(key), "utf8").toString("base64url");
}

/** The first `limit` rows, and the cursor after the last of them when more rows were fetched. */
export function takePage<T>(
  rows: readonly T[],
  limit: number,
  keyOf: (row: T) => unknown,
): { items: T[]; nextCursor: string | null } {
  const items = rows.slice(0, limit);
  const last = items[items.length - 1];
  return { items, nextCursor: rows.length > limit && last !== undefined ? encodeCursor(keyOf(last)) : null };
}

/** The key schemas of the cursors, one per list. */
// The keys are looked up in the store: no NUL (protocol/common.ts).
const cursorText = withoutNul("a cursor key", 256, 1);
export const CURSOR_KEYS = {
  job: cursorText,
  runner: cursorText,
  device: z.tuple([cursorText, cursorText]),
  log: z.tuple([z.number().int().min(0), z.number().int().min(0)]),
} as const;
