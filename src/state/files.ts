// Durable file primitives: atomic writes (temp file, fsync, rename, fsync of the dir) and
// schema-checked reads that tell "missing" from "invalid" so the caller can repair.
//
// Nothing inside the state dir is followed through a symbolic link: reads open with
// O_NOFOLLOW and check the type of what they opened, modes are changed through the opened
// handle (fchmod), and an atomic write's rename replaces a link instead of writing through
// it. A link (or a directory, fifo, socket...) where a state file belongs is reported as a
// finding and moved aside by repair. The state dir itself may be a link (operators put
// /var/lib/runner on another disk that way); that one link is followed.
import { promises as fs, constants, type Stats } from "node:fs";
import path from "node:path";
import type { z } from "zod";
import { RunnerError } from "../errors.js";

/** Absent on Windows, where the lstat before each open stands in for it. */
const O_NOFOLLOW = constants.O_NOFOLLOW ?? 0;
/** Opening a fifo for reading would otherwise block until a writer comes. */
const O_NONBLOCK = constants.O_NONBLOCK ?? 0;

export const DIR_MODE = 0o700;
export const SECRET_FILE_MODE = 0o600;

/**
 * `durable: false` skips the fsyncs: the rename stays atomic and survives a crash of this
 * process (the page cache keeps it), but not a crash of the machine.
 */
export async function writeFileAtomic(
  file: string,
  data: string | Uint8Array,
  mode = SECRET_FILE_MODE,
  durable = true,
): Promise<void> {
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

export async function writeJsonAtomic(
  file: string,
  value: unknown,
  mode = SECRET_FILE_MODE,
  durable = true,
): Promise<void> {
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

export type JsonRead<T> = { kind: "missing" } | { kind: "ok"; value: T } | { kind: "invalid"; reason: string };

/** Reads a JSON file and checks it against a schema. Never throws for bad content. */
export async function readJsonFile<T>(file: string, schema: z.ZodType<T>): Promise<JsonRead<T>> {
  let text: string | null;
  try {
    text = await readStateFile(file);
  } catch (error) {
    if (error instanceof ForeignEntryError) return { kind: "invalid", reason: error.message };
    throw error;
  }
  if (text === null) return { kind: "missing" };
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

/**
 * Moves a bad file out of the way, keeping it for a person to look at. Returns the new path.
 * A rename acts on the entry itself: a link is moved, never followed.
 */
export async function moveAside(file: string, now: Date): Promise<string> {
  const stamp = now.toISOString().replace(/[:.]/g, "-");
  const target = `${file}.corrupt-${stamp}`;
  await fs.rename(file, target);
  await syncDir(path.dirname(file));
  return target;
}

/** What lstat says is at a path; "symlink" is never followed. */
export type EntryType =
  "file" | "directory" | "symlink" | "fifo" | "socket" | "block device" | "character device" | "unknown";

export interface Entry {
  type: EntryType;
  /** Permission bits (of the link itself for a link). */
  mode: number;
  /** Where a link points (read, never followed); null for anything else. */
  target: string | null;
}

function typeOf(stat: Stats): EntryType {
  if (stat.isFile()) return "file";
  if (stat.isDirectory()) return "directory";
  if (stat.isSymbolicLink()) return "symlink";
  if (stat.isFIFO()) return "fifo";
  if (stat.isSocket()) return "socket";
  if (stat.isBlockDevice()) return "block device";
  if (stat.isCharacterDevice()) return "character device";
  return "unknown";
}

/** What is at a path, without following a link there; null when nothing is. */
export async function entryAt(p: string): Promise<Entry | null> {
  let stat: Stats;
  try {
    stat = await fs.lstat(p);
  } catch (error) {
    if (isAbsent(error)) return null;
    throw error;
  }
  const type = typeOf(stat);
  const target = type === "symlink" ? await fs.readlink(p).catch(() => null) : null;
  return { type, mode: stat.mode & 0o777, target };
}

/** Something other than the expected kind of file stands where a state file belongs. */
export class ForeignEntryError extends RunnerError {
  constructor(
    readonly file: string,
    readonly found: EntryType,
    expected: "file" | "directory",
  ) {
    super(
      "state_invalid",
      `${file} is a ${found}, not a ${expected}; links and other file types in the state dir are never followed (\`runner repair\` moves it aside)`,
    );
  }
}

/**
 * Opens an existing state file or dir for reading without following a link, and checks that
 * what was opened is of the expected type. Null when nothing is there.
 */
async function openNoFollow(p: string, expected: "file" | "directory"): Promise<fs.FileHandle | null> {
  if (O_NOFOLLOW === 0) {
    const entry = await entryAt(p);
    if (entry === null) return null;
    if (entry.type !== expected) throw new ForeignEntryError(p, entry.type, expected);
  }
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(p, constants.O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    // ELOOP (a link), ENXIO (a socket), EISDIR...: say what is there, when lstat can tell.
    const entry = await entryAt(p).catch(() => null);
    if (entry !== null && entry.type !== expected) throw new ForeignEntryError(p, entry.type, expected);
    throw error;
  }
  const type = typeOf(await handle.stat());
  if (type !== expected) {
    await handle.close();
    throw new ForeignEntryError(p, type, expected);
  }
  return handle;
}

/** A state file's text, or null when it does not exist; throws ForeignEntryError for a link, a dir... */
export async function readStateFile(file: string): Promise<string | null> {
  const handle = await openNoFollow(file, "file");
  if (handle === null) return null;
  try {
    return await handle.readFile("utf8");
  } finally {
    await handle.close();
  }
}

/**
 * chmod that never follows a link: opens the file or dir (O_NOFOLLOW), checks its type, and
 * changes the mode through the handle (fchmod). Throws ForeignEntryError for anything else.
 */
export async function chmodNoFollow(p: string, mode: number, expected: "file" | "directory"): Promise<void> {
  const handle = await openNoFollow(p, expected);
  if (handle === null) throw new RunnerError("state_invalid", `${p} does not exist`);
  try {
    await handle.chmod(mode);
  } finally {
    await handle.close();
  }
}

/** The permission bits of a path, or null when it does not exist. */
export async function modeOf(p: string): Promise<number | null> {
  try {
    return (await fs.stat(p)).mode & 0o777;
  } catch (error) {
    if (isAbsent(error)) return null;
    throw error;
  }
}

/** Nothing there: ENOENT, or ENOTDIR when a part of the path is a file (`repair` then fails to create it, saying so). */
function isAbsent(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ENOTDIR";
}

/**
 * Creates a dir (and its parents) if missing. A link or a file already there is refused with a
 * ForeignEntryError, unless `followLink` (only for the state dir itself, which may be a link).
 */
export async function ensureDir(dir: string, options: { followLink?: boolean } = {}): Promise<void> {
  await makeDirs(dir);
  if (options.followLink) return;
  const entry = await entryAt(dir);
  if (entry !== null && entry.type !== "directory") throw new ForeignEntryError(dir, entry.type, "directory");
}

/** Why a file or dir could not be written, in words, for the errno codes an operator meets. */
const WRITE_CAUSES: Record<string, string> = {
  EROFS: "the file system is read-only",
  EACCES: "permission denied",
  EPERM: "not permitted",
  ENOENT: "no such file or directory",
  ENOTDIR: "a part of the path is a file, not a directory",
  ENOSPC: "no space left on the device",
  EDQUOT: "disk quota exceeded",
};

/** `EROFS (the file system is read-only)`: an errno code with its cause in words, when it has one. */
function describeWriteCode(code: string): string {
  const why = WRITE_CAUSES[code];
  return why === undefined ? code : `${code} (${why})`;
}

/**
 * Whether this process can create (and so write) files in `dir`: null when it can, else why
 * not (`EROFS (the file system is read-only)`). It creates and removes an empty file there, as
 * only trying tells: mode bits say nothing to root, nor about a read-only mount, an immutable
 * dir or an ACL. The file is named like an atomic write's temp file, so that a start removes it
 * should this process be killed in between. A full file system (ENOSPC, EDQUOT) counts as
 * writable: it is a passing state that the daemon waits out (it rejects jobs while the work
 * dir is short of --min-free-disk-mb), not something a person must change before a start.
 */
export async function probeWritable(dir: string): Promise<string | null> {
  const probe = path.join(dir, `.write-probe.${process.pid}.${Date.now()}.tmp`);
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(probe, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, SECRET_FILE_MODE);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === undefined) throw error;
    // EEXIST: another probe of this pid in the same millisecond, so the dir takes files.
    return ["EEXIST", "ENOSPC", "EDQUOT"].includes(code) ? null : describeWriteCode(code);
  }
  await handle.close();
  await fs.rm(probe, { force: true });
  return null;
}

/**
 * A state or work dir the runner cannot write, as a RunnerError (state_invalid: exit 78, no
 * restart loop) naming the path and the cause; any other error is returned as it is.
 */
export function unwritable(what: string, error: unknown): unknown {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === undefined || WRITE_CAUSES[code] === undefined) return error;
  return new RunnerError("state_invalid", `cannot ${what}: ${describeWriteCode(code)}`, {
    cause: error,
    hint: "give the runner a directory it can write (--state-dir, --work-dir), or fix the file system's mount or permissions",
  });
}

/**
 * `mkdir -p`, one level at a time, failing with a RunnerError (state_invalid: exit 78) that
 * names the dir and the cause. Not `fs.mkdir(..., { recursive: true })`: on a path whose
 * parent exists but refuses the child with ENOENT (anything under /proc, say) Node's recursive
 * mkdir retries for ever at full CPU, and its other failures surfaced as "unexpected error".
 */
export async function makeDirs(dir: string, mode = DIR_MODE): Promise<void> {
  const missing: string[] = [];
  for (let at = path.resolve(dir); ;) {
    try {
      await fs.stat(at);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw cannotCreate(dir, error);
    }
    missing.unshift(at);
    const parent = path.dirname(at);
    if (parent === at) break;
    at = parent;
  }
  for (const at of missing) {
    try {
      await fs.mkdir(at, { mode });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw cannotCreate(dir, error);
    }
  }
}

function cannotCreate(dir: string, error: unknown): unknown {
  return unwritable(`create the directory ${dir}`, error);
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
  // Through a linked dir this would delete files outside the state dir.
  const entry = await entryAt(dir);
  if (entry === null) return [];
  if (entry.type !== "directory") throw new ForeignEntryError(dir, entry.type, "directory");
  const names = await fs.readdir(dir);
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
 * A link or other non-file at a record's name is moved aside unread (never followed).
 */
export async function readJsonDir<T>(
  dir: string,
  schema: z.ZodType<T>,
  now: Date,
): Promise<{ values: T[]; setAside: SetAsideFile[] }> {
  const values: T[] = [];
  const setAside: SetAsideFile[] = [];
  // A linked dir would have us read, and move aside, files outside the state dir.
  const entry = await entryAt(dir);
  if (entry === null) return { values, setAside };
  if (entry.type !== "directory") throw new ForeignEntryError(dir, entry.type, "directory");
  const names = await fs.readdir(dir);
  for (const name of names.filter(isRecordName).sort()) {
    const file = path.join(dir, name);
    const read = await readJsonFile(file, schema);
    if (read.kind === "ok") values.push(read.value);
    else if (read.kind === "invalid") setAside.push({ file: await moveAside(file, now), reason: read.reason });
  }
  return { values, setAside };
}

/** The names of the one-record-per-file dirs (outbox/, running/) that hold records. */
export function isRecordName(name: string): boolean {
  return name.endsWith(".json") && !name.startsWith(".");
}
