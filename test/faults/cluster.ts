// The real processes of a fault run: the reference control plane (`runner control-plane`,
// restarted on the same port and --data dir), runners (`runner start`), and waits that
// always end: every one has a deadline and says what it waited for.
import { spawn, type ChildProcess } from "node:child_process";
import { promises as fs, readFileSync } from "node:fs";
import path from "node:path";
import type { TestContext } from "node:test";
import { AdminClient } from "../../src/api-client/admin.js";
import { RUNNER_BIN, runCli } from "../helpers/cli.js";
import { startDaemon, type DaemonProcess, type LogLine } from "../helpers/daemon.js";
import { childrenOf } from "../helpers/processes.js";
import type { Tally } from "./tally.js";
import { freeLoopbackPort } from "../helpers/ports.js";
import { onCleanup } from "../helpers/cleanup.js";

export const ADMIN_TOKEN = "adm_faults-admin-token-0123456789";

/** Polls `check` every `everyMs` until it holds; throws after `timeoutMs` naming `what`. */
export async function waitUntil(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  everyMs = 20,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** Parses JSON log lines from a stream as they come; non-JSON lines are kept as `msg`. */
function collectLines(stream: NodeJS.ReadableStream, onLine: (line: LogLine) => void): void {
  let partial = "";
  stream.on("data", (chunk: Buffer) => {
    partial += chunk.toString();
    const parts = partial.split("\n");
    partial = parts.pop() ?? "";
    for (const text of parts) {
      if (!text.trim()) continue;
      try {
        onLine(JSON.parse(text) as LogLine);
      } catch {
        onLine({ level: 0, msg: text });
      }
    }
  });
}

/** One `runner control-plane` process. Its log lines go to `onLine` (the audit reads them). */
export class ControlPlaneProcess {
  private expectedExit = false;
  readonly exited: Promise<number>;

  private constructor(
    readonly child: ChildProcess,
    readonly url: string,
    tally: Tally,
    lastLines: () => string,
  ) {
    this.exited = new Promise((resolve) =>
      child.on("exit", (code, signal) => resolve(code ?? (signal === "SIGKILL" ? 137 : 143))),
    );
    void this.exited.then((code) => {
      if (!this.expectedExit)
        tally.finding("crashes", `the control plane (pid ${child.pid}) exited by itself with ${code}: ${lastLines()}`);
    });
  }

  static async start(options: {
    port: number;
    dataDir: string;
    adminTokenFile: string;
    extra: string[];
    tally: Tally;
    onLine: (line: LogLine) => void;
  }): Promise<ControlPlaneProcess> {
    const child = spawn(
      process.execPath,
      [
        RUNNER_BIN,
        "control-plane",
        "--listen",
        `127.0.0.1:${options.port}`,
        "--data",
        options.dataDir,
        "--admin-token-file",
        options.adminTokenFile,
        ...options.extra,
      ],
      { env: { ...process.env, RUNNER_LOG_FORMAT: "json" }, stdio: ["ignore", "pipe", "pipe"] },
    );
    // The last lines, to say why it died should it crash.
    const tail: LogLine[] = [];
    collectLines(child.stderr!, (line) => {
      tail.push(line);
      if (tail.length > 40) tail.shift();
      options.onLine(line);
    });
    let stdout = "";
    const listening = new Promise<void>((resolve, reject) => {
      child.stdout!.on("data", (chunk: Buffer) => {
        stdout += chunk.toString();
        if (stdout.includes("control plane listening on")) resolve();
      });
      child.on("exit", (code) => reject(new Error(`the control plane exited (${code}) before listening: ${stdout}`)));
    });
    const timeout = new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error("the control plane did not listen within 30 s")), 30_000).unref(),
    );
    await Promise.race([listening, timeout]);
    const describeTail = () =>
      tail
        .filter((l) => !/^\s+at /.test(String(l.msg)))
        .slice(-6)
        .map((l) => JSON.stringify(l).slice(0, 400))
        .join(" | ");
    return new ControlPlaneProcess(child, `http://127.0.0.1:${options.port}`, options.tally, describeTail);
  }

  async stop(signal: "SIGTERM" | "SIGKILL"): Promise<void> {
    this.expectedExit = true;
    this.child.kill(signal);
    const timeout = new Promise<void>((resolve) => setTimeout(resolve, 15_000).unref());
    await Promise.race([this.exited, timeout]);
    // A SIGTERM that did not end it within the deadline is a hang: end it the hard way.
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGKILL");
      await this.exited;
    }
  }
}

/** One `runner start` process, its log, and the faults done to it (expected exits are not crashes). */
export class RunnerProcess {
  private expectedExit = false;
  /** Workers this suite killed while the daemon lived: their "exited unexpectedly" line is expected. */
  workersKilled = 0;

  private constructor(readonly daemon: DaemonProcess) {}

  static start(t: TestContext, args: string[], tally: Tally): RunnerProcess {
    const runner = new RunnerProcess(startDaemon(t, args));
    void runner.daemon.exited.then((code) => {
      if (!runner.expectedExit)
        tally.finding(
          "crashes",
          `the daemon (pid ${runner.pid}) exited by itself with ${code}: ${lastLines(runner.daemon)}`,
        );
    });
    return runner;
  }

  get pid(): number {
    return this.daemon.child.pid!;
  }

  get lines(): LogLine[] {
    return this.daemon.lines;
  }

  /** The worker processes (the daemon's children). */
  workers(): number[] {
    return childrenOf(this.pid);
  }

  /** Whether the last channel event in the log is a connect (not a drop). */
  isConnected(): boolean {
    for (let i = this.lines.length - 1; i >= 0; i--) {
      const msg = this.lines[i]!.msg;
      if (msg === "connected to the control plane") return true;
      if (/reconnecting in \d+ ms/.test(msg)) return false;
    }
    return false;
  }

  /** The first line at or after index `from` that matches. */
  waitForLogFrom(from: number, what: string, match: (line: LogLine) => boolean, timeoutMs: number): Promise<LogLine> {
    return this.daemon
      .waitForLog((line) => this.lines.indexOf(line) >= from && match(line), timeoutMs)
      .catch(() => {
        throw new Error(`no daemon log line "${what}" within ${timeoutMs} ms: ${lastLines(this.daemon)}`);
      });
  }

  waitConnectedFrom(from: number, timeoutMs = 30_000): Promise<LogLine> {
    return this.waitForLogFrom(from, "connected", (l) => l.msg === "connected to the control plane", timeoutMs);
  }

  signal(signal: NodeJS.Signals): void {
    if (signal === "SIGKILL" || signal === "SIGTERM") this.expectedExit = true;
    process.kill(this.pid, signal);
  }

  async stop(signal: "SIGTERM" | "SIGKILL", timeoutMs = 30_000): Promise<number> {
    this.expectedExit = true;
    this.daemon.child.kill(signal);
    const timeout = new Promise<number>((resolve) => setTimeout(() => resolve(-1), timeoutMs).unref());
    const code = await Promise.race([this.daemon.exited, timeout]);
    if (code === -1) {
      this.daemon.child.kill("SIGKILL");
      return this.daemon.exited;
    }
    return code;
  }
}

/** The daemon's last lines, stack frames left out (the error's own line says more). */
function lastLines(daemon: DaemonProcess): string {
  return daemon.lines
    .filter((l) => !/^\s+at /.test(String(l.msg)))
    .slice(-6)
    .map((l) => String(l.msg).slice(0, 300))
    .join(" | ");
}

/** Linux: the parent pid of `pid`, or null when it is gone. */
export function parentOf(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return null;
  }
}

/** The suite's admin token in `root`/admin-token, for `--admin-token-file`. */
export async function writeAdminTokenFile(root: string): Promise<string> {
  const file = path.join(root, "admin-token");
  await fs.writeFile(file, ADMIN_TOKEN + "\n", { mode: 0o600 });
  return file;
}

/** A fuzz phase's own control plane (200 ms heartbeat, 2.5 s lease), stopped after the test. */
export async function startPhaseControlPlane(
  t: TestContext,
  root: string,
  tally: Tally,
): Promise<{ cp: ControlPlaneProcess; admin: AdminClient; port: number }> {
  const port = await freeLoopbackPort();
  const cp = await ControlPlaneProcess.start({
    port,
    dataDir: path.join(root, "cp-data"),
    adminTokenFile: await writeAdminTokenFile(root),
    extra: ["--heartbeat-interval-ms", "200", "--lease-ms", "2500"],
    tally,
    onLine: () => undefined,
  });
  onCleanup(t, () => cp.stop("SIGTERM"));
  return { cp, admin: new AdminClient(cp.url, ADMIN_TOKEN), port };
}

/** `runner register` through the real CLI with a fresh one-time token; `flags` are the runner's settings flags. */
export async function registerThroughCli(
  admin: AdminClient,
  root: string,
  url: string,
  name: string,
  flags: string[],
): Promise<void> {
  const { token } = await admin.createRegistrationToken(600);
  const tokenFile = path.join(root, `registration-token-${name}`);
  await fs.writeFile(tokenFile, token + "\n", { mode: 0o600 });
  const registered = await runCli(["register", "--url", url, "--token-file", tokenFile, "--name", name, ...flags]);
  if (registered.code !== 0) throw new Error(`register ${name} failed: ${registered.all}`);
}
