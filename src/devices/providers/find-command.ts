// Whether a command is on PATH, without running it (a provider whose tool is not installed
// reports no devices rather than failing every scan).
import { promises as fs, constants } from "node:fs";
import path from "node:path";

export async function findOnPath(command: string, env: NodeJS.ProcessEnv = process.env): Promise<string | null> {
  const names = process.platform === "win32" ? [`${command}.exe`, `${command}.cmd`, command] : [command];
  for (const dir of (env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue;
    for (const name of names) {
      const candidate = path.join(dir, name);
      try {
        await fs.access(candidate, constants.X_OK);
        if ((await fs.stat(candidate)).isFile()) return candidate;
      } catch {
        // not here
      }
    }
  }
  return null;
}
