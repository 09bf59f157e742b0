#!/usr/bin/env node
// Runs the compiled test files with node's test runner. On Linux, when Debian's
// dbus-run-session and gnome-keyring-daemon are installed, the run happens inside a private
// D-Bus session with an unlocked, throw-away keyring, so the keychain tests use a real
// Secret Service (and never the developer's own keyring).
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
const has = (cmd) => spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;

function testFiles(dir) {
  const pick = process.argv.slice(2).filter((a) => !a.startsWith("-"));
  const out = [];
  for (const entry of readdirSync(dir)) {
    const full = path.join(dir, entry);
    if (statSync(full).isDirectory()) out.push(...testFiles(full));
    else if (entry.endsWith(".test.js") && (pick.length === 0 || pick.some((p) => full.includes(p)))) out.push(full);
  }
  return out.sort();
}

function run(cmd, args, env) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: "inherit", env });
    const deadline = setTimeout(() => {
      process.stderr.write(`the test run passed ${RUN_DEADLINE_MS / 60_000} min: a test file is stuck; stopping it\n`);
      child.kill("SIGKILL");
    }, RUN_DEADLINE_MS);
    child.on("exit", (code, signal) => {
      clearTimeout(deadline);
      resolve(code ?? (signal ? 1 : 0));
    });
  });
}

// Every test sets its own timeout; this default bounds one that does not. No --test-force-exit:
// on Node 20 it was seen to end a file's process before that file's last tests had run, with
// the run still green. A file kept up after its tests instead meets RUN_DEADLINE_MS below.
function hangGuards() {
  return ["--test-timeout=600000"];
}

/** The whole run's bound (the suite takes 5-20 min): past it the run fails, saying so, rather than hold CI. */
const RUN_DEADLINE_MS = 45 * 60_000;

async function main() {
  if (
    process.platform === "linux" &&
    !process.env.RUNNER_TEST_IN_DBUS &&
    has("dbus-run-session") &&
    has("gnome-keyring-daemon")
  ) {
    const home = mkdtempSync(path.join(os.tmpdir(), "runner-test-keyring-"));
    const env = { ...process.env, RUNNER_TEST_IN_DBUS: "1", XDG_DATA_HOME: home, XDG_RUNTIME_DIR: home };
    const code = await run("dbus-run-session", ["--", process.execPath, ...process.argv.slice(1)], env);
    rmSync(home, { recursive: true, force: true });
    return code;
  }
  const env = { ...process.env };
  if (process.env.RUNNER_TEST_IN_DBUS) {
    // --unlock reads the new keyring's password from stdin and creates the login collection.
    const started = spawnSync("gnome-keyring-daemon", ["--unlock", "--components=secrets"], {
      input: "test-only-password",
      encoding: "utf8",
    });
    if (started.status === 0) env.RUNNER_TEST_SECRET_SERVICE = "1";
    else process.stderr.write(`gnome-keyring-daemon did not start: ${started.stderr}\n`);
  }
  const files = testFiles(path.join(root, "dist", "test"));
  if (files.length === 0) {
    process.stderr.write("no test files found under dist/test (did the build run?)\n");
    return 1;
  }
  return run(process.execPath, ["--test", "--test-reporter=spec", ...hangGuards(), ...files], env);
}

process.exitCode = await main();
