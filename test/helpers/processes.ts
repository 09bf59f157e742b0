// Looking at real processes from tests (Linux reads /proc; elsewhere kill(pid, 0)).
import { readdirSync, readFileSync } from "node:fs";

/** The fields of /proc/<pid>/stat after "pid (comm) ": state, ppid, pgrp, ... */
function statFields(pid: number | string): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return null;
  }
}

/** Alive and not a zombie (a zombie is dead; only its parent's reaping is pending). */
export function isRunning(pid: number): boolean {
  if (process.platform === "linux") {
    const state = statFields(pid)?.[0];
    return state !== undefined && state !== "Z" && state !== "X";
  }
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Linux: the pids whose parent is `pid`. */
export function childrenOf(pid: number): number[] {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry) && Number(statFields(entry)?.[1]) === pid)
    .map(Number);
}
