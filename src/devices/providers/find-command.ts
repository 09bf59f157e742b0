// The commands the providers run, and how they run them. System tools are named by absolute
// path: the PATH of a service, or one an operator changed, must not decide which `ioreg`
// answers. Tools that live anywhere (adb) are looked up on PATH without being run, so a
// provider whose tool is not installed reports no devices instead of failing every scan.
// Commands run through node:child_process rather than execa: the daemon runs a few per scan
// and execa's ~100 modules would stay in its memory for good.
import { execFile } from "node:child_process";
import { promises as fs, constants } from "node:fs";
import path from "node:path";

/** macOS tools, where the OS installs them. */
export const SYSTEM_TOOLS = {
  ioreg: "/usr/sbin/ioreg",
  xcrun: "/usr/bin/xcrun",
} as const;

export async function findOnPath(command: string, env: NodeJS.ProcessEnv = process.env): Promise<string | null> {
  const names = process.platform === "win32" ? [`${command}.exe`, `${command}.cmd`, command] : [command];
  for (const dir of (env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue;
    for (const name of names) {
      const candidate = path.join(dir, name);
      if (await isExecutableFile(candidate)) return candidate;
    }
  }
  return null;
}

export async function isExecutableFile(file: string): Promise<boolean> {
  try {
    await fs.access(file, constants.X_OK);
    return (await fs.stat(file)).isFile();
  } catch {
    return false;
  }
}

/** Tools print inventories of kilobytes; a runaway one is cut off here rather than filling the daemon's memory. */
const MAX_OUTPUT_BYTES = 32 * 2 ** 20;

/**
 * Runs `file` without a shell, stdin closed, and returns its stdout. Rejects when it exits
 * non-zero, is killed at `timeoutMs` (SIGKILL: a hung tool must not outlive the scan), or
 * prints more than 32 MiB; the message names the tool and says which.
 */
export function runTool(file: string, args: readonly string[], options: { timeoutMs: number }): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      { timeout: options.timeoutMs, killSignal: "SIGKILL", maxBuffer: MAX_OUTPUT_BYTES, encoding: "utf8" },
      (error, stdout, stderr) => {
        if (!error) return resolve(stdout);
        const name = path.basename(file);
        const code = (error as { code?: unknown }).code;
        const why =
          error.killed && error.signal === "SIGKILL"
            ? `was killed after ${options.timeoutMs} ms`
            : code === "ERR_CHILD_PROCESS_STDIO_MAXBUFFER"
              ? `printed more than ${MAX_OUTPUT_BYTES} bytes`
              : typeof code === "number"
                ? `exited ${code}${stderr.trim() ? `: ${stderr.trim().split("\n")[0]!.slice(0, 200)}` : ""}`
                : error.message;
        reject(new Error(`${name} ${args.join(" ")} ${why}`, { cause: error }));
      },
    );
    child.stdin?.end();
  });
}
