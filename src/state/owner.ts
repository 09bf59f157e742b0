// Who owns the state dir's files. A machine-wide service is registered and installed by root
// but runs as another user, who must own the state dir and everything in it (0700/0600 leave
// no one else a way in). Accounts are looked up with id(1), which asks the system's user
// database (NSS, Open Directory) as every other tool does; links are never followed.
import { execFile } from "node:child_process";
import { promises as fs } from "node:fs";
import path from "node:path";
import { RunnerError } from "../errors.js";

export interface Account {
  name: string;
  uid: number;
  gid: number;
}

/** By absolute path, as the other system tools: a PATH that shadows it must not decide who owns the state. */
const ID = "/usr/bin/id";

function id(args: string[]): Promise<string | null> {
  return new Promise((resolve) => {
    execFile(ID, args, { timeout: 10_000, encoding: "utf8" }, (error, stdout) =>
      resolve(error === null ? stdout.trim() : null),
    );
  });
}

/** The account named `name` (a user name or a numeric uid); a clear error when there is none. */
export async function lookupAccount(name: string): Promise<Account> {
  const [uid, gid, login] = await Promise.all([id(["-u", name]), id(["-g", name]), id(["-un", name])]);
  if (uid === null || gid === null || !/^\d+$/.test(uid) || !/^\d+$/.test(gid))
    throw new RunnerError("usage", `there is no user ${JSON.stringify(name)} on this machine`, {
      hint: "name an existing account (create one for the service first, e.g. useradd --system runner)",
    });
  return { name: login ?? name, uid: Number(uid), gid: Number(gid) };
}

/** A uid's user name for messages, or the number when the user database has none. */
export async function accountName(uid: number): Promise<string> {
  return (await id(["-un", String(uid)])) ?? String(uid);
}

/** The uid that owns a path (a link itself, never its target), or null when nothing is there. */
export async function ownerOf(p: string): Promise<number | null> {
  try {
    return (await fs.lstat(p)).uid;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
}

/**
 * Gives a path to `account` (its primary group too) without following a link. `recursive`
 * walks a directory's contents the same way (a job's leftover work dir), links included as
 * entries but never entered.
 */
export async function chownNoFollow(p: string, account: Account, recursive: boolean): Promise<void> {
  await fs.lchown(p, account.uid, account.gid);
  if (!recursive) return;
  const entries = await fs.readdir(p, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOTDIR") return [];
    throw error;
  });
  for (const entry of entries) await chownNoFollow(path.join(p, entry.name), account, entry.isDirectory());
}
