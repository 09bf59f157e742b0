// A `runner control-plane --database …` replica as a real child process on its own loopback
// port, its output (JSON log lines) kept and watched: shared by the replica tests.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { AdminClient } from "../../src/api-client/admin.js";
import { RUNNER_BIN } from "./cli.js";
import { onCleanup } from "./cleanup.js";

export const ADMIN_TOKEN = "adm_replicas-test-admin-token-0123456789";

export interface Replica {
  url: string;
  databaseUrl: string;
  child: ChildProcess;
  output: () => string;
  /** Resolves once the replica's output (stdout and stderr) satisfies the predicate. */
  outputWhere: (predicate: (output: string) => boolean) => Promise<void>;
  admin: AdminClient;
}

/** A file holding ADMIN_TOKEN (0600), removed after the test: give it to every replica. */
export function adminTokenFile(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "runner-replicas-"));
  onCleanup(t, () => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, "admin-token");
  writeFileSync(file, ADMIN_TOKEN, { mode: 0o600 });
  return file;
}

/** Starts `runner control-plane` on the database and resolves with its URL once it listens. */
export function startReplica(
  t: TestContext,
  databaseUrl: string,
  heartbeatMs: number,
  args: string[] = [],
): Promise<Replica> {
  const child = spawn(
    process.execPath,
    [
      RUNNER_BIN,
      "control-plane",
      "--database",
      databaseUrl,
      "--listen",
      "127.0.0.1:0",
      "--heartbeat-interval-ms",
      String(heartbeatMs),
      ...args,
    ],
    { env: { ...process.env, RUNNER_LOG_FORMAT: "json" }, stdio: ["ignore", "pipe", "pipe"] },
  );
  let output = "";
  const watchers = new Set<() => void>();
  // A replica that exits never satisfies a predicate again: the wait fails then, with its output.
  const outputWhere = (predicate: (text: string) => boolean) =>
    new Promise<void>((resolve, reject) => {
      const onExit = (code: number | null, signal: string | null) => {
        watchers.delete(check);
        reject(new Error(`the replica exited (${code ?? signal}) before its output matched:\n${output}`));
      };
      const check = () => {
        if (!predicate(output)) return;
        watchers.delete(check);
        child.off("exit", onExit);
        resolve();
      };
      watchers.add(check);
      child.once("exit", onExit);
      check();
      if (watchers.has(check) && (child.exitCode !== null || child.signalCode !== null))
        onExit(child.exitCode, child.signalCode);
    });
  onCleanup(t, () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  return new Promise((resolve, reject) => {
    const onData = (data: Buffer) => {
      output += data.toString("utf8");
      for (const check of [...watchers]) check();
      const match = /control plane listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output);
      if (match)
        resolve({
          url: match[1]!,
          databaseUrl,
          child,
          output: () => output,
          outputWhere,
          admin: new AdminClient(match[1]!, ADMIN_TOKEN),
        });
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("exit", (code, signal) =>
      reject(new Error(`replica exited (${code ?? signal}) before listening:\n${output}`)),
    );
  });
}
