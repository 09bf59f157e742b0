// Shared set-up for integration tests: temp dirs, an in-process control plane on loopback,
// and a runner registered against it through the real CLI.
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { pino } from "pino";
import {
  startControlPlane,
  type ControlPlane,
  type ControlPlaneOptions,
} from "../../src/control-plane/control-plane.js";
import { AdminClient } from "../../src/api-client/admin.js";
import { runCli, type CliResult } from "./cli.js";
import { onCleanup } from "./cleanup.js";

export async function tempDir(t: TestContext, prefix = "runner-test-"): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  onCleanup(t, () => fs.rm(dir, { recursive: true, force: true, maxRetries: 3 }));
  return dir;
}

/** A logger that keeps every line in memory, for checks on what was logged. */
export function captureLogger(level = "debug") {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  return { logger: pino({ level }, stream), lines, text: () => lines.join("") };
}

export interface TestControlPlane {
  cp: ControlPlane;
  admin: AdminClient;
  logs: () => string;
  /** Writes a fresh one-time registration token to a file and returns the path. */
  tokenFile(dir: string): Promise<string>;
}

export async function startTestControlPlane(
  t: TestContext,
  options: Omit<ControlPlaneOptions, "logger" | "adminToken"> = {},
): Promise<TestControlPlane> {
  const capture = captureLogger();
  const cp = await startControlPlane({
    logger: capture.logger,
    adminToken: "adm_test-admin-token-0123456789",
    ...options,
  });
  onCleanup(t, () => cp.close());
  const admin = new AdminClient(cp.url, "adm_test-admin-token-0123456789");
  let n = 0;
  return {
    cp,
    admin,
    logs: capture.text,
    async tokenFile(dir) {
      const { token } = await admin.createRegistrationToken(600);
      const file = path.join(dir, `token-${n++}`);
      await fs.writeFile(file, token + "\n", { mode: 0o600 });
      return file;
    },
  };
}

export interface RegisteredRunner {
  stateDir: string;
  /** The settings flags every CLI call of this runner needs (--config and --state-dir, which every verb takes). */
  flags: string[];
  register: CliResult;
}

export async function registerRunner(
  t: TestContext,
  plane: Pick<TestControlPlane, "tokenFile"> & { cp: { url: string } },
  options: {
    store?: "file" | "keychain" | "auto";
    name?: string;
    machineId?: string;
    extra?: string[];
    url?: string;
    /** The CLI's environment on top of this process's (NODE_EXTRA_CA_CERTS, say). */
    env?: Record<string, string>;
  } = {},
): Promise<RegisteredRunner> {
  const root = await tempDir(t);
  const stateDir = path.join(root, "state");
  // The store and the host's id go in a config file rather than flags: every verb takes --config
  // and --state-dir, but only some use these two (a verb refuses the flag of a setting it does not
  // use, and ignores its config key).
  const configFile = path.join(root, "config.json");
  await fs.writeFile(
    configFile,
    JSON.stringify({ credentialStore: options.store ?? "file", machineId: options.machineId ?? "machine-A" }),
  );
  const flags = ["--config", configFile, "--state-dir", stateDir];
  const tokenFile = await plane.tokenFile(root);
  const register = await runCli(
    [
      "register",
      "--url",
      options.url ?? plane.cp.url,
      "--token-file",
      tokenFile,
      "--name",
      options.name ?? `runner-${path.basename(root)}`,
      ...flags,
      ...(options.extra ?? []),
    ],
    { env: options.env },
  );
  assert.equal(register.code, 0, `register failed: ${register.all}`);
  return { stateDir, flags, register };
}

/** Whether this run has a real Secret Service (set by scripts/run-tests.mjs). */
export function secretServiceAvailable(): boolean {
  return process.env.RUNNER_TEST_SECRET_SERVICE === "1";
}

/** Skip keychain tests only where no Secret Service can be had; in CI its absence is a failure. */
export function requireKeychain(t: TestContext): boolean {
  if (secretServiceAvailable()) return true;
  if (process.env.CI)
    assert.fail("CI must provide a Secret Service (dbus-run-session + gnome-keyring-daemon); see .ci/run");
  t.skip("no Secret Service here: run the tests through `npm test`, which starts one");
  return false;
}
