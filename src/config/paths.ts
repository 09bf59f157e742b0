// Where the runner keeps its files, per platform. Pure: the caller passes the platform, the
// environment and the home dir, so every platform's answer is testable on any machine.
import path from "node:path";

export interface PathInputs {
  platform: NodeJS.Platform;
  env: Record<string, string | undefined>;
  home: string;
  /** Installed as a system service: use the machine-wide dirs. */
  system: boolean;
}

export interface RunnerDirs {
  configDir: string;
  stateDir: string;
}

export function defaultDirs({ platform, env, home, system }: PathInputs): RunnerDirs {
  const join = platform === "win32" ? path.win32.join : path.posix.join;
  if (platform === "win32") {
    const base = system ? (env.PROGRAMDATA ?? "C:\\ProgramData") : (env.LOCALAPPDATA ?? join(home, "AppData", "Local"));
    return { configDir: join(base, "runner"), stateDir: join(base, "runner", "state") };
  }
  if (platform === "darwin") {
    const base = system ? "/Library/Application Support" : join(home, "Library", "Application Support");
    return { configDir: join(base, "runner"), stateDir: join(base, "runner", "state") };
  }
  if (system) return { configDir: "/etc/runner", stateDir: "/var/lib/runner" };
  const configHome = absolute(env.XDG_CONFIG_HOME) ?? join(home, ".config");
  const stateHome = absolute(env.XDG_STATE_HOME) ?? join(home, ".local", "state");
  return { configDir: join(configHome, "runner"), stateDir: join(stateHome, "runner") };
}

/** The XDG spec says relative paths in these variables are invalid and must be ignored. */
function absolute(p: string | undefined): string | undefined {
  return p && path.posix.isAbsolute(p) ? p : undefined;
}

/** The files inside a state dir. One place names them all. */
export function stateFiles(stateDir: string) {
  return {
    stateDir,
    registration: path.join(stateDir, "registration.json"),
    credentialFile: path.join(stateDir, "credential"),
    lock: path.join(stateDir, "runner.lock"),
    outbox: path.join(stateDir, "outbox"),
    /** The journal of running jobs, for recovery after a crash (src/jobs/journal.ts). */
    running: path.join(stateDir, "running"),
    /** Left by `runner start` when it stops for a person (exit 78 or 79); see src/state/blocked.ts. */
    blocked: path.join(stateDir, "needs-operator"),
    /** What the control plane last confirmed of the device inventory (src/devices/state-file.ts). */
    devices: path.join(stateDir, "devices.json"),
    /** The daemon's status endpoints while it runs: a Unix socket, mode 0600 (src/status/server.ts). */
    statusSocket: path.join(stateDir, "status.sock"),
    /** The default --work-dir: the jobs' own directories (src/jobs/work-dir.ts). */
    work: path.join(stateDir, "work"),
  };
}
export type StateFiles = ReturnType<typeof stateFiles>;
