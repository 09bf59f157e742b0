// The node a service unit runs. process.execPath is often a versioned path that an upgrade of
// node deletes: Homebrew's …/Cellar/node@20/20.11.1/bin/node goes with `brew upgrade`, leaving
// a unit that cannot start. A path that follows upgrades is preferred when it is the very same
// node today: Homebrew's `opt` link, else a `node` on PATH (a /usr/local/bin/node link, say).
import { realpathSync } from "node:fs";
import path from "node:path";

/** Homebrew's upgrade-proof link for a node inside its Cellar, or null for any other path. */
export function homebrewOptPath(execPath: string): string | null {
  const match = /^(.*)\/Cellar\/([^/]+)\/[^/]+\/bin\/node$/.exec(execPath);
  return match ? `${match[1]}/opt/${match[2]}/bin/node` : null;
}

function realpathOrNull(file: string): string | null {
  try {
    return realpathSync(file);
  } catch {
    return null;
  }
}

/**
 * Homebrew's `opt` link when it resolves to the running node; else execPath when its own dir is
 * on PATH (it is then what the shell runs too); else the first `node` on PATH that resolves to
 * the running node; else execPath. `pathEnv` is the installer's PATH (the unit gets the same).
 */
export function stableNodePath(execPath: string, pathEnv: string | undefined): string {
  const running = realpathOrNull(execPath);
  if (running === null) return execPath;
  const sameNode = (candidate: string) => realpathOrNull(candidate) === running;
  const brew = homebrewOptPath(execPath);
  if (brew !== null && sameNode(brew)) return brew;
  const dirs = (pathEnv ?? "").split(path.delimiter).filter((dir) => path.isAbsolute(dir));
  if (dirs.includes(path.dirname(execPath))) return execPath;
  return dirs.map((dir) => path.join(dir, "node")).find(sameNode) ?? execPath;
}
