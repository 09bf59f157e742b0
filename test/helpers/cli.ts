// Runs the real CLI (bin/runner.js) as a child process, the way an operator would.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const RUNNER_BIN = path.join(REPO_ROOT, "bin", "runner.js");

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout and stderr together, for "appears nowhere" checks. */
  all: string;
}

export interface CliOptions {
  env?: Record<string, string | undefined>;
  /** Another copy of bin/runner.js to run (an install of its own). */
  bin?: string;
  input?: string;
  timeoutMs?: number;
  /** Run as this user id (the test must be root). */
  uid?: number;
  /** The working directory (relative paths in arguments resolve against it). */
  cwd?: string;
  /**
   * Run in a mount namespace of its own where this dir is a read-only bind of itself (Linux,
   * root: `unshare -m`), so that even root gets EROFS there and nothing outlives the process.
   */
  readOnlyDir?: string;
  /** Likewise, a dir over which a file system with no free inode is mounted: creating a file there is ENOSPC. */
  fullDir?: string;
}

/** Mounts "$1" read-only on itself, then runs the rest of the arguments. */
const READ_ONLY_BIND = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"';
/** Mounts over "$1" a tmpfs whose one inode is its root dir, then runs the rest of the arguments. */
const FULL_MOUNT = 'mount -t tmpfs -o size=1m,nr_inodes=1,mode=0700 tmpfs "$1" && shift && exec "$@"';

export function runCli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const command = [process.execPath, options.bin ?? RUNNER_BIN, ...args];
    const [file, ...argv] =
      options.readOnlyDir === undefined && options.fullDir === undefined
        ? command
        : [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            options.readOnlyDir === undefined ? FULL_MOUNT : READ_ONLY_BIND,
            "sh",
            (options.readOnlyDir ?? options.fullDir)!,
            ...command,
          ];
    const child = spawn(file!, argv, {
      env: { ...process.env, RUNNER_LOG_FORMAT: "json", ...options.env },
      stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      ...(options.uid === undefined ? {} : { uid: options.uid }),
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    if (options.input !== undefined) child.stdin?.end(options.input);
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(
        new Error(
          `runner ${args.join(" ")} did not finish within ${options.timeoutMs ?? 30_000} ms\n${stdout}\n${stderr}`,
        ),
      );
    }, options.timeoutMs ?? 30_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr, all: stdout + stderr });
    });
  });
}
