// A throw-away PostgreSQL cluster for tests: `initdb` and `pg_ctl` from Debian's postgresql
// package, in a temp dir, on a free loopback port, trust authentication for 127.0.0.1 only
// (no Unix socket, no other address), stopped and removed afterwards. PostgreSQL refuses to
// run as root, so under root the cluster belongs to the unprivileged `postgres` user the
// package creates. Absent binaries skip the tests with the reason; under CI=true they fail
// (.ci/run installs the package), like the keychain tests.
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { TestContext } from "node:test";
import pg from "pg";
import { freeLoopbackPort } from "./ports.js";

export interface PostgresCluster {
  port: number;
  /** A new, empty database on the cluster; returns its URL. */
  createDatabase(): Promise<string>;
  stop(): Promise<void>;
}

/** Where Debian puts the server binaries (/usr/lib/postgresql/<major>/bin), newest major first. */
function findBinDir(): string | undefined {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return undefined;
  const majors = readdirSync(root)
    .filter((entry) => /^\d+$/.test(entry))
    .sort((a, b) => Number(b) - Number(a));
  for (const major of majors) {
    const bin = path.join(root, major, "bin");
    if (existsSync(path.join(bin, "initdb")) && existsSync(path.join(bin, "pg_ctl"))) return bin;
  }
  return undefined;
}

/** uid and gid of `postgres` from /etc/passwd (os.userInfo only knows the current user). */
function postgresUser(): { uid: number; gid: number } | undefined {
  const line = readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((entry) => entry.startsWith("postgres:"));
  const fields = line?.split(":");
  return fields ? { uid: Number(fields[2]), gid: Number(fields[3]) } : undefined;
}

/** Why a cluster cannot be made here, or undefined when it can. */
export function postgresUnavailableReason(): string | undefined {
  if (process.platform !== "linux") return "the PostgreSQL test cluster is set up for Debian/Linux only";
  if (findBinDir() === undefined)
    return "PostgreSQL is not installed (/usr/lib/postgresql/<major>/bin/initdb): apt-get install postgresql";
  if (process.getuid?.() === 0 && postgresUser() === undefined)
    return "running as root and there is no `postgres` user to own the cluster (PostgreSQL refuses root)";
  return undefined;
}

/**
 * Whether this test may use PostgreSQL: skips it (with the reason) where the server is not
 * installed; under CI=true its absence is a failure.
 */
export function requirePostgres(t: TestContext): boolean {
  const reason = postgresUnavailableReason();
  if (reason === undefined) return true;
  if (process.env.CI) assert.fail(`CI must provide PostgreSQL (see .ci/run): ${reason}`);
  t.skip(reason);
  return false;
}

function run(
  file: string,
  args: string[],
  user: { uid: number; gid: number } | undefined,
  timeoutMs: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { timeout: timeoutMs, ...(user ?? {}), env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LANG: "C.UTF-8" } },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`${path.basename(file)} failed: ${error.message}\n${stdout}\n${stderr}`));
        else resolve();
      },
    );
  });
}

/** Starts a cluster (call requirePostgres first). Takes a few seconds: share one per test file. */
export async function startPostgresCluster(): Promise<PostgresCluster> {
  const bin = findBinDir();
  if (bin === undefined) throw new Error(postgresUnavailableReason());
  const user = process.getuid?.() === 0 ? postgresUser() : undefined;
  const root = mkdtempSync(path.join(os.tmpdir(), "runner-test-pg-"));
  if (user) chownSync(root, user.uid, user.gid);
  const dataDir = path.join(root, "data");
  const port = await freeLoopbackPort();
  const stopCluster = () =>
    run(path.join(bin, "pg_ctl"), ["stop", "-D", dataDir, "-m", "immediate", "-w"], user, 30_000);
  let started = false;
  try {
    // Trust is safe here: the server listens on 127.0.0.1 only, and has no Unix socket.
    await run(
      path.join(bin, "initdb"),
      ["-D", dataDir, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync"],
      user,
      120_000,
    );
    const serverOptions = [
      `-p ${port}`,
      "-c listen_addresses=127.0.0.1",
      "-c unix_socket_directories=''",
      // A test database need not survive a crash of the machine.
      "-c fsync=off",
      "-c synchronous_commit=off",
      "-c full_page_writes=off",
      "-c max_connections=200",
    ].join(" ");
    await run(
      path.join(bin, "pg_ctl"),
      ["start", "-D", dataDir, "-w", "-t", "120", "-l", path.join(root, "server.log"), "-o", serverOptions],
      user,
      130_000,
    );
    started = true;
  } catch (error) {
    if (started) await stopCluster().catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
    throw error;
  }
  // pg_ctl's server outlives this process unless stopped: a run that ends without calling
  // stop() (a test timed out, an exception in a hook) still stops it and removes its files.
  const stopAtExit = () => {
    spawnSync(path.join(bin, "pg_ctl"), ["stop", "-D", dataDir, "-m", "immediate", "-w"], {
      ...(user ?? {}),
      stdio: "ignore",
      timeout: 30_000,
    });
    rmSync(root, { recursive: true, force: true });
  };
  process.once("exit", stopAtExit);
  let databases = 0;
  const adminUrl = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    port,
    async createDatabase() {
      const name = `test_${process.pid}_${++databases}`;
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE ${name}`);
      } finally {
        await client.end();
      }
      return `postgres://postgres@127.0.0.1:${port}/${name}`;
    },
    async stop() {
      process.off("exit", stopAtExit);
      try {
        await stopCluster();
      } finally {
        rmSync(root, { recursive: true, force: true });
      }
    },
  };
}
