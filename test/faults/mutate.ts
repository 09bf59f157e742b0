// Frame mutation for the fuzz runs: structural mutations of a real message (a field
// replaced by a hostile value of another type or size, removed, added; the type changed) and
// byte-level ones (truncated, bytes flipped, garbage), plus wholly random frames.
import type { Prng } from "./prng.js";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Values chosen to hit limits: sizes, depths, ranges, NULs, types. */
function hostileValue(prng: Prng): Json {
  switch (prng.int(0, 17)) {
    case 0:
      return null;
    case 1:
      return prng.chance(0.5);
    case 2:
      return -1;
    case 3:
      return 0;
    case 4:
      return 2 ** 31;
    case 5:
      return Number.MAX_SAFE_INTEGER;
    case 6:
      return 1e308;
    case 7:
      return prng.int(-1000, 1000) + prng.next();
    case 8:
      return "";
    case 9:
      return "a\0b";
    case 10:
      return "x".repeat(prng.int(1, 70_000));
    case 11:
      return "\u0001".repeat(prng.int(1, 20_000));
    case 12:
      return prng.string(prng.int(1, 40), 'abc\\"\n\u2028\ud800{}[]:,0123456789');
    case 13:
      return [];
    case 14:
      return Array.from({ length: prng.int(1, 5_000) }, () => prng.int(0, 9));
    case 15:
      return {};
    case 16:
      return nested(prng.int(10, 5_000));
    default:
      return { [prng.string(5)]: prng.string(5) };
  }
}

/**
 * Deep nesting is written as text at the end (see `encodeFuzzed`): JSON.stringify itself
 * runs out of stack a few thousand levels down. Here it is a placeholder string.
 */
function nested(depth: number): Json {
  return `${NESTED}${depth}`;
}

const NESTED = "\u0000nested:";

/** JSON text of a fuzzed value, with each nesting placeholder expanded to `[[[...1...]]]`. */
export function encodeFuzzed(value: unknown): string {
  return JSON.stringify(value).replace(
    /"\\u0000nested:(\d+)"/g,
    (_, depth: string) => "[".repeat(Number(depth)) + "1" + "]".repeat(Number(depth)),
  );
}

/** Every path to a value inside `value` (objects and arrays, depth-first, bounded). */
function paths(value: Json, prefix: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  if (out.length > 200 || value === null || typeof value !== "object") return out;
  const children: [string | number, Json][] = Array.isArray(value)
    ? value.slice(0, 8).map((v, i) => [i, v])
    : Object.entries(value);
  for (const [key, child] of children) {
    out.push([...prefix, key]);
    paths(child, [...prefix, key], out);
  }
  return out;
}

function parentAt(
  root: Json,
  path: (string | number)[],
): { parent: Record<string | number, Json>; key: string | number } | null {
  let node: Json = root;
  for (const key of path.slice(0, -1)) {
    if (node === null || typeof node !== "object") return null;
    node = (node as Record<string | number, Json>)[key] ?? null;
  }
  if (node === null || typeof node !== "object") return null;
  return { parent: node as Record<string | number, Json>, key: path[path.length - 1]! };
}

const MESSAGE_TYPES = [
  "hello",
  "ready",
  "accept",
  "reject",
  "started",
  "log",
  "result",
  "goodbye",
  "devices_summary",
  "devices",
  "welcome",
  "assign",
  "result_ack",
  "cancel",
  "drain",
  "error",
  "devices_ack",
  "devices_resync",
  "",
  "HELLO",
  "__proto__",
];

/** One to three structural mutations of a decoded message. */
export function mutateMessage(prng: Prng, message: Record<string, unknown>): Json {
  const copy = JSON.parse(JSON.stringify(message)) as Json;
  for (let n = prng.int(1, 3); n > 0; n--) {
    const all = paths(copy);
    const target = all.length > 0 ? prng.pick(all) : null;
    const at = target && parentAt(copy, target);
    const op = prng.int(0, 9);
    if (op <= 5 && at) at.parent[at.key] = hostileValue(prng);
    else if (op === 6 && at && !Array.isArray(at.parent)) delete at.parent[at.key];
    else if (op === 7 && copy !== null && typeof copy === "object" && !Array.isArray(copy))
      copy.type = prng.pick(MESSAGE_TYPES);
    else if (op === 8 && copy !== null && typeof copy === "object" && !Array.isArray(copy))
      copy[prng.string(6)] = hostileValue(prng);
    else if (at && Array.isArray(at.parent[at.key])) (at.parent[at.key] as Json[]).push(hostileValue(prng));
  }
  return copy;
}

/** Byte-level damage to an encoded frame. */
export function mangleText(prng: Prng, text: string): string {
  switch (prng.int(0, 4)) {
    case 0:
      return text.slice(0, prng.int(0, text.length));
    case 1: {
      const chars = [...text];
      for (let n = prng.int(1, 4); n > 0 && chars.length > 0; n--)
        chars[prng.int(0, chars.length - 1)] = String.fromCharCode(prng.int(0, 255));
      return chars.join("");
    }
    case 2:
      return text + prng.string(prng.int(1, 20), '{}[],:"\\ \0');
    case 3:
      return text.replace(/"type":"[a-z_]*"/, `"type":"${prng.pick(MESSAGE_TYPES)}"`);
    default:
      return prng.string(prng.int(0, 10)) + text;
  }
}

/** A frame made from nothing: random text, random JSON, a huge or deeply nested one, or binary. */
export function randomFrame(prng: Prng): string | Buffer {
  switch (prng.int(0, 6)) {
    case 0:
      return Buffer.from(Array.from({ length: prng.int(0, 512) }, () => prng.int(0, 255)));
    case 1:
      return prng.string(prng.int(0, 300), 'abc{}[]":,\\ 0123456789\n\0');
    case 2:
      return encodeFuzzed({ type: prng.pick(MESSAGE_TYPES), [prng.string(4)]: hostileValue(prng) });
    case 3:
      return encodeFuzzed(hostileValue(prng));
    case 4:
      return JSON.stringify({
        type: prng.pick(["error", "unknown_kind", "welcome"]),
        code: "x",
        message: "m".repeat(prng.int(100_000, 900_000)),
      });
    case 5:
      return "[".repeat(prng.int(1000, 100_000));
    default:
      return encodeFuzzed({ type: prng.pick(MESSAGE_TYPES), payload: nested(prng.int(100, 6000)) });
  }
}
