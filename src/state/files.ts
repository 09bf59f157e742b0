// Durable file primitives: atomic writes (temp file, fsync, rename, fsync of the dir) and
// schema-checked reads that tell "missing" from "invalid" so the caller can repair.
import { promises as fs, constants } from "node:fs";
import path from "node:path";
import type { z } from "zod";

export const DIR_MODE = 0o700;
export const SECRET_FILE_MODE = 0o600;

/**
 * `durable: false` skips the fsyncs: the rename stays atomic and survives a crash of this
 * process (the page cache keeps it), but not a crash of the machine.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = SECRET_FILE_MODE, durable = true): Promise<void> {
  const dir = path.dirname(file);
  const temp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  const handle = await fs.open(temp, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, mode);
  try {
    await handle.writeFile(data);
    if (durable) await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await fs.rename(temp, file);
  } catch (error) {
    await fs.rm(temp, { force: true });
    throw error;
  }
  if (durable) await syncDir(dir);
}

export async function writeJsonAtomic(file: string, value: unknown, mode = SECRET_FILE_MODE, durable = true): Promise<void> {
  await writeFileAtomic(file, JSON.stringify(value, null, 2) + "\n", mode, durable);
}

/** Makes a rename or create durable. Not supported on Windows, where it is skipped. */
export async function syncDir(dir: string): Promise<void> {
  if (process.platform === "win32") return;
  const handle = await fs.open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export type JsonRead<T> =
  | { kind: "missing" }
  | { kind: "ok"; value: T }
  | { kind: "invalid"; reason: string };

/** Reads a JSON file and checks it against a schema. Never throws for bad content. */
export async function readJsonFile<T>(file: string, schema: z.ZodType<T>): Promise<JsonRead<T>> {
  let text: string;
  try {
    text = await fs.readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { kind: "missing" };
    throw error;
  }
  if (text.trim() === "") return { kind: "invalid", reason: "the file is empty" };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    return { kind: "invalid", reason: `not valid JSON (${(error as Error).message}); the file may be truncated` };
  }
  const result = schema.safeParse(parsed);
  if (!result.success) {
    const issues = result.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    return { kind: "invalid", reason: `does not match the expected shape (${issues})` };
  }
  return { kind: "ok", value: result.data };
}

/** Moves a bad file out of the way, keeping it for a person to look at. Returns the new path. */
export async function moveAside(file: string, now: Date): Promise<string> {
  const stamp = now.toISOString().replace(/[:.]/g, "-");
  const target = `${file}.corrupt-${stamp}`;
  await fs.rename(file, target);
  await syncDir(path.dirname(file));
  return target;
}

/** The permission bits of a path, or null when it does not exist. */
export async function modeOf(p: string): Promise<number | null> {
  try {
    return (await fs.stat(p)).mode & 0o777;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

export async function ensureDir(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: DIR_MODE });
}

export interface SetAsideFile {
  file: string;
  reason: string;
}

/**
 * Removes the temp files of atomic writes that another process began and never finished (it
 * was killed between write and rename). Call only while holding the state dir's lock: then no
 * other process can be writing there. Returns the names removed.
 */
export async function removeInterruptedWrites(dir: string): Promise<string[]> {
  const names = await fs.readdir(dir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return [] as string[];
    throw error;
  });
  const removed: string[] = [];
  for (const name of names) {
    const writer = /\.(\d+)\.(?:\d+|now)\.tmp$/.exec(name)?.[1];
    if (writer === undefined || Number(writer) === process.pid) continue;
    await fs.rm(path.join(dir, name), { force: true });
    removed.push(name);
  }
  return removed;
}

/**
 * Reads every `*.json` file of a directory (one record each) against a schema. A damaged file
 * is moved aside (kept for a person) and named in `setAside`; a missing dir reads as empty.
 * Temp files of an interrupted atomic write (".name....tmp") and set-aside files are skipped.
 */
export async function readJsonDir<T>(dir: string, schema: z.ZodType<T>, now: Date): Promise<{ values: T[]; setAside: SetAsideFile[] }> {
  const values: T[] = [];
  const setAside: SetAsideFile[] = [];
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { values, setAside };
    throw error;
  }
  for (const name of names.filter((n) => n.endsWith(".json") && !n.startsWith(".")).sort()) {
    const file = path.join(dir, name);
    const read = await readJsonFile(file, schema);
    if (read.kind === "ok") values.push(read.value);
    else if (read.kind === "invalid") setAside.push({ file: await moveAside(file, now), reason: read.reason });
  }
  return { values, setAside };
}
