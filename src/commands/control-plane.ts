// `runner control-plane`: runs the reference control plane in the foreground until SIGINT or
// SIGTERM. It speaks plain HTTP, so it refuses non-loopback addresses unless told otherwise.
import { readFileSync } from "node:fs";
import { InvalidArgumentError, type Command } from "commander";
import { ExitCode, RunnerError } from "../errors.js";
import { isLoopbackHost } from "../config/transport.js";
import { action, print } from "../cli/output.js";
import { withExamples } from "../cli/examples.js";
import type { Logger } from "../log/logger.js";
import { describeDatabaseUrl } from "../control-plane/store/describe-url.js";

export const ADMIN_TOKEN_ENV = "RUNNER_CP_ADMIN_TOKEN";
export const DATABASE_ENV = "RUNNER_CP_DATABASE";
const DEFAULT_LISTEN = "127.0.0.1:8080";

interface ControlPlaneFlags {
  listen: string;
  data?: string;
  database?: string;
  adminTokenFile?: string;
  allowRemote?: boolean;
  minAgentVersion?: string;
  heartbeatIntervalMs?: number;
  leaseMs?: number;
  maxConnections?: number;
  maxLogBytesPerJob?: number;
  maxLogChunksPerJob?: number;
  maxDevicesPerRunner?: number;
}

export function defineControlPlaneCommand(program: Command, deps: { logger: () => Logger }): void {
  const command = program
    .command("control-plane")
    .description("run the reference control plane (HTTP API and the runners' WebSocket channel) in the foreground")
    .option("--listen <host:port>", "address to listen on", DEFAULT_LISTEN)
    .option("--data <dir>", "directory for the SQLite database (kept in memory when absent)")
    .option(
      "--database <url>",
      `a PostgreSQL database (postgres://user@host:port/db; or set ${DATABASE_ENV}) instead of SQLite, shareable by several control planes; the password goes in PGPASSWORD or ${DATABASE_ENV}, never on the command line`,
    )
    .option("--admin-token-file <file>", `read the admin token from this file (or set ${ADMIN_TOKEN_ENV})`)
    .option("--allow-remote", "allow a non-loopback listen address (plain HTTP: put TLS in front)")
    .option("--min-agent-version <version>", "answer 426 upgrade_required to older agents")
    .option("--heartbeat-interval-ms <ms>", "how often runners ping (announced in the welcome)", toInt)
    .option("--lease-ms <ms>", "how long a job's lease lasts without hearing from its runner", toInt)
    .option("--max-connections <n>", "open sockets at once, runners' channels included (default 4096)", toCount)
    .option("--max-log-bytes-per-job <bytes>", "log bytes one job attempt may store (default 67108864)", toCount)
    .option("--max-log-chunks-per-job <n>", "log chunks one job attempt may store (default 1048576)", toCount)
    .option("--max-devices-per-runner <n>", "device rows one runner may have (default 10000)", toCount);
  // Its own options only: the runner's settings (and their environment and config file) are not its.
  withExamples(command, [
    { says: "in memory on 127.0.0.1:8080, for a try-out (prints the admin token)", line: "runner control-plane" },
    {
      says: "keep its data, with an admin token of your choosing",
      line: "runner control-plane --data /var/lib/runner-cp --admin-token-file /etc/runner-cp/admin-token",
    },
    {
      says: "behind a TLS-terminating proxy on another host",
      line: "runner control-plane --listen 0.0.0.0:8080 --allow-remote --data /var/lib/runner-cp",
    },
  ]);
  command.action(action((flags: ControlPlaneFlags) => runControlPlane(flags, deps.logger())));
}

async function runControlPlane(flags: ControlPlaneFlags, logger: Logger): Promise<number> {
  const { host, port } = parseListenAddress(flags.listen);
  if (!isLoopbackHost(host)) {
    if (!flags.allowRemote) {
      throw new RunnerError(
        "usage",
        `refusing to listen on ${host}: it is not a loopback address, and the control plane speaks plain HTTP, ` +
          "so tokens and credentials would cross the network unencrypted",
        { hint: "pass --allow-remote if a TLS-terminating proxy is in front of it, or listen on 127.0.0.1" },
      );
    }
    console.error(`warning: listening on ${host} with plain HTTP (--allow-remote); put TLS in front of it`);
  }
  const givenToken = readAdminToken(flags.adminTokenFile);
  const databaseUrl = readDatabaseUrl(flags.database);
  if (databaseUrl !== undefined && flags.data !== undefined) {
    throw new RunnerError("usage", `--data (SQLite) and --database/${DATABASE_ENV} (PostgreSQL) exclude each other`, {
      hint: "give one of them",
    });
  }
  // Loaded here, not at the top: every other verb (the daemon above all) stays free of SQLite.
  const { startControlPlane } = await import("../control-plane/control-plane.js");
  const controlPlane = await startControlPlane({
    host,
    port,
    dataDir: flags.data,
    databaseUrl,
    adminToken: givenToken,
    minAgentVersion: flags.minAgentVersion,
    heartbeatIntervalMs: flags.heartbeatIntervalMs,
    leaseMs: flags.leaseMs,
    maxConnections: flags.maxConnections,
    maxLogBytesPerJob: flags.maxLogBytesPerJob,
    maxLogChunksPerJob: flags.maxLogChunksPerJob,
    maxDevicesPerRunner: flags.maxDevicesPerRunner,
    logger,
  });

  print(`control plane listening on ${controlPlane.url}`);
  print(
    databaseUrl !== undefined
      ? `data: PostgreSQL ${describeDatabaseUrl(databaseUrl)}`
      : flags.data
        ? `data: ${flags.data}`
        : "data: in memory (lost at exit; use --data <dir> to keep it)",
  );
  if (givenToken !== undefined) {
    print(`admin token: the one from ${flags.adminTokenFile ?? ADMIN_TOKEN_ENV}`);
  } else if (controlPlane.adminToken !== null) {
    print(`admin token: ${controlPlane.adminToken}`);
    print("The admin token is shown once: store it now (only its hash is kept).");
  } else {
    print(
      `admin token: unchanged (stored in ${databaseUrl !== undefined ? "the database" : flags.data}; it was shown when it was created)`,
    );
  }

  const signal = await waitForStopSignal();
  print(`${signal}: stopping the control plane`);
  await controlPlane.close();
  return ExitCode.OK;
}

function toCount(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError("expected a whole number");
  return Number(value);
}

function toInt(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError("expected a whole number of milliseconds");
  return Number(value);
}

/** "host:port", "[::1]:port" or ":port" (loopback). */
export function parseListenAddress(value: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value.trim());
  const port = Number(match?.[3]);
  if (!match || port > 65535) {
    throw new RunnerError("usage", `--listen ${value}: expected host:port, e.g. ${DEFAULT_LISTEN} or [::1]:8080`);
  }
  return { host: match[1] ?? (match[2] || "127.0.0.1"), port };
}

/**
 * The flag wins over the environment. A password in the flag's URL would be readable by
 * every user of the machine (the process list): refused, with where to put it instead.
 */
function readDatabaseUrl(flag: string | undefined): string | undefined {
  if (flag !== undefined) {
    let password = "";
    try {
      password = new URL(flag).password;
    } catch {
      // Not a URL: the store says what it expects.
    }
    if (password !== "") {
      throw new RunnerError("usage", "--database: the URL holds a password, which the process list would show", {
        hint: `put the URL in ${DATABASE_ENV} instead, or the password alone in PGPASSWORD`,
      });
    }
    return flag;
  }
  const fromEnv = process.env[DATABASE_ENV];
  if (fromEnv === undefined) return undefined;
  if (fromEnv.trim() === "") throw new RunnerError("usage", `${DATABASE_ENV} is set but empty`);
  return fromEnv.trim();
}

/** The file wins over the environment; an empty value is an error, not "generate one". */
function readAdminToken(file: string | undefined): string | undefined {
  if (file !== undefined) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (error) {
      throw new RunnerError("usage", `cannot read the admin token file ${file}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    if (text.trim() === "") throw new RunnerError("usage", `the admin token file ${file} is empty`);
    return text.trim();
  }
  const fromEnv = process.env[ADMIN_TOKEN_ENV];
  if (fromEnv === undefined) return undefined;
  if (fromEnv.trim() === "") throw new RunnerError("usage", `${ADMIN_TOKEN_ENV} is set but empty`);
  return fromEnv.trim();
}

/**
 * Resolves at the first SIGINT or SIGTERM. Both listeners go away then, so a second signal
 * during a slow shutdown gets Node's default behaviour and ends the process.
 */
function waitForStopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve(signal);
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
}
