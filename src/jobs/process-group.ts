// Signalling and watching a job's whole process group. A job is started as the leader of its
// own group (detached), so every descendant that did not leave the group on purpose (setsid)
// can be reached with one `kill(-pgid, sig)`. Windows has no process groups: there the tree
// is killed with `taskkill /T /F` and "alive" falls back to the leader's pid.
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { setTimeout as delay } from "node:timers/promises";

const isWindows = process.platform === "win32";

/** Sends a signal to every member of the group. Returns false when the group does not exist. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  if (isWindows) return killTreeOnWindows(pgid);
  try {
    process.kill(-pgid, signal);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return false;
    // EPERM: the group exists but is not ours to signal (a pgid the OS has given to someone else).
    return true;
  }
}

function killTreeOnWindows(pid: number): boolean {
  if (!isPidAlive(pid)) return false;
  // Windows cannot ask a console process to stop politely from here; the whole tree goes at once.
  execFile("taskkill", ["/T", "/F", "/PID", String(pid)], { windowsHide: true }, () => undefined);
  return true;
}

function isPidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/**
 * Whether the group still has a member that is not a zombie. A zombie is dead (it holds no
 * memory and runs nothing) but still counts for `kill(-pgid, 0)` until its parent reaps it,
 * and an orphan's new parent (PID 1 in a container) may take seconds to do that.
 */
export function isGroupAlive(pgid: number): boolean {
  if (isWindows) return isPidAlive(pgid);
  try {
    process.kill(-pgid, 0);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== "ESRCH";
  }
  if (process.platform !== "linux") return true;
  return listLiveGroupMembers(pgid).length > 0;
}

/** Linux: the pids in the group that are not zombies, read from /proc. */
export function listLiveGroupMembers(pgid: number): number[] {
  const members: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return [pgid];
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch {
      continue; // exited while we looked
    }
    // After "pid (comm) ": state, ppid, pgrp... The comm may contain spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const state = fields[0];
    if (Number(fields[2]) === pgid && state !== "Z" && state !== "X") members.push(Number(entry));
  }
  return members;
}

/**
 * Polls until the group has no live member, or `timeoutMs` passes. Starts at 1 ms (the common
 * case is a group that is already gone or about to be) and backs off to 50 ms.
 */
export async function waitForGroupExit(pgid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let wait = 1;
  for (;;) {
    if (!isGroupAlive(pgid)) return true;
    const left = deadline - Date.now();
    if (left <= 0) return false;
    await delay(Math.min(wait, left));
    wait = Math.min(wait * 2, 50);
  }
}
