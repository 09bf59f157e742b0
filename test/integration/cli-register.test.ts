// `runner register`, `status`, `unregister`, and the errors a person sees for bad input.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { runCli } from "../helpers/cli.js";
import { registerRunner, startTestControlPlane, tempDir } from "../helpers/fixtures.js";
import { ExitCode } from "../../src/errors.js";

describe("runner register", () => {
  test(
    "reads the token from stdin, records the store, and status shows the local view",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const dir = await tempDir(t);
      const stateDir = path.join(dir, "state");
      const { token } = await plane.admin.createRegistrationToken(60);
      const flags = ["--state-dir", stateDir];
      const register = await runCli(
        [
          "register",
          "--url",
          plane.cp.url,
          "--name",
          "mac-mini-07",
          "--labels",
          "macos,arm64",
          ...flags,
          "--credential-store",
          "file",
        ],
        { input: token + "\n" },
      );
      assert.equal(register.code, ExitCode.OK, register.all);
      assert.match(register.stdout, /registered runner rnr_\w+ \(mac-mini-07\)/);
      assert.equal((await fs.stat(stateDir)).mode & 0o777, 0o700);
      assert.equal((await fs.stat(path.join(stateDir, "credential"))).mode & 0o777, 0o600);
      assert.equal((await fs.stat(path.join(stateDir, "outbox"))).mode & 0o777, 0o700);

      const status = await runCli(["status", "--json", ...flags]);
      assert.equal(status.code, ExitCode.OK, status.all);
      const view = JSON.parse(status.stdout) as Record<string, unknown>;
      assert.equal(view.registered, true);
      assert.equal(view.name, "mac-mini-07");
      assert.deepEqual(view.labels, ["macos", "arm64"]);
      assert.equal(view.controlPlaneUrl, plane.cp.url);
      assert.equal(view.credentialStore, "file");
      assert.deepEqual(view.lock, { state: "free", pid: null });
      const [listed] = await plane.admin.listRunners();
      assert.equal(listed?.runnerId, view.runnerId);
    },
  );

  test(
    "a used token is refused with its own message and exit code 77, also when repair re-registers with it",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const dir = await tempDir(t);
      const tokenFile = await plane.tokenFile(dir);
      const first = await runCli([
        "register",
        "--url",
        plane.cp.url,
        "--token-file",
        tokenFile,
        "--state-dir",
        path.join(dir, "a"),
        "--credential-store",
        "file",
      ]);
      assert.equal(first.code, ExitCode.OK, first.all);
      const second = await runCli([
        "register",
        "--url",
        plane.cp.url,
        "--token-file",
        tokenFile,
        "--state-dir",
        path.join(dir, "b"),
        "--credential-store",
        "file",
        "--name",
        "other",
      ]);
      assert.equal(second.code, ExitCode.TOKEN_REFUSED, second.all);
      assert.match(
        second.stderr,
        /refused the registration token: it is unknown, already used or expired\n {2}→ ask an admin for a new registration token/,
      );
      assert.ok(
        !second.all.includes((await fs.readFile(tokenFile, "utf8")).trim().slice(4)),
        "the token is never printed",
      );

      // The same token given to repair, for a runner whose credential was revoked.
      const runner = (
        JSON.parse(await fs.readFile(path.join(dir, "a", "registration.json"), "utf8")) as { runnerId: string }
      ).runnerId;
      await plane.admin.revokeRunner(runner);
      const repair = await runCli(["repair", "--token-file", tokenFile, "--state-dir", path.join(dir, "a")]);
      assert.equal(repair.code, ExitCode.TOKEN_REFUSED, repair.all);
      assert.match(repair.stdout, /failed: the control plane at .* refused the registration token/);
    },
  );

  test(
    "registering twice needs --replace, which keeps one runner on the control plane",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane, { name: "box" });
      const again = await runCli([
        "register",
        "--url",
        plane.cp.url,
        "--token-file",
        await plane.tokenFile(path.dirname(runner.stateDir)),
        "--name",
        "box",
        ...runner.flags,
      ]);
      assert.equal(again.code, ExitCode.USAGE, again.all);
      assert.match(again.stderr, /already holds runner rnr_\w+ \(box\)[\s\S]*--replace/);
      // Another state dir taking the same name: the control plane's 409 name_taken points at the flag.
      const sameName = await runCli([
        "register",
        "--url",
        plane.cp.url,
        "--token-file",
        await plane.tokenFile(path.dirname(runner.stateDir)),
        "--name",
        "box",
        "--credential-store",
        "file",
        "--state-dir",
        path.join(path.dirname(runner.stateDir), "other"),
      ]);
      assert.equal(sameName.code, ExitCode.USAGE, sameName.all);
      assert.match(sameName.stderr, /HTTP 409, name_taken[\s\S]*→ pass --replace to take the name over/);
      const replaced = await runCli([
        "register",
        "--replace",
        "--url",
        plane.cp.url,
        "--token-file",
        await plane.tokenFile(path.dirname(runner.stateDir)),
        "--name",
        "box",
        ...runner.flags,
      ]);
      assert.equal(replaced.code, ExitCode.OK, replaced.all);
      assert.equal((await plane.admin.listRunners()).length, 1);
    },
  );

  test("bad input gets a clear, specific error", { timeout: 60_000 }, async (t) => {
    const dir = await tempDir(t);
    const flags = ["--state-dir", path.join(dir, "s")];
    const noToken = await runCli(["register", "--url", "http://127.0.0.1:9", ...flags, "--credential-store", "file"]);
    assert.equal(noToken.code, ExitCode.USAGE);
    assert.match(noToken.stderr, /no registration token given/);

    const plaintext = await runCli(["register", "--url", "http://cp.example.com", "--token", "rgt_x", ...flags]);
    assert.equal(plaintext.code, ExitCode.USAGE);
    assert.match(plaintext.stderr, /refusing plain http:\/\/ to cp\.example\.com/);

    const labels = await runCli([
      "register",
      "--url",
      "http://127.0.0.1:9",
      "--labels",
      "ok,not ok",
      "--token",
      "rgt_x",
      ...flags,
    ]);
    assert.equal(labels.code, ExitCode.USAGE);
    assert.match(labels.stderr, /--labels/);

    const badSetting = await runCli(["verify", ...flags, "--log-level", "loud"]);
    assert.equal(badSetting.code, ExitCode.USAGE);
    assert.match(badSetting.stderr, /--log-level: "loud" is not valid/);

    const bothTokens = await runCli([
      "register",
      "--url",
      "http://127.0.0.1:9",
      "--token",
      "rgt_x",
      "--token-file",
      "-",
      ...flags,
    ]);
    assert.equal(bothTokens.code, ExitCode.USAGE, bothTokens.all);
    assert.match(bothTokens.stderr, /--token and --token-file exclude each other/);

    const fraction = await runCli(["verify", ...flags, "--request-timeout-ms", "1.5"]);
    assert.equal(fraction.code, ExitCode.USAGE, fraction.all);
    assert.match(fraction.stderr, /--request-timeout-ms: "1\.5" is not valid \(expected a whole number\)/);

    // Nothing there that repair fixes by itself: verify does not send the person to it.
    await fs.mkdir(path.join(dir, "empty", "outbox"), { mode: 0o700, recursive: true });
    const unregistered = await runCli(["verify", "--state-dir", path.join(dir, "empty")]);
    assert.equal(unregistered.code, ExitCode.UNHEALTHY, unregistered.all);
    assert.match(unregistered.stdout, /\[not_registered\][\s\S]*none that `runner repair` fixes by itself/);

    for (const verb of [
      ["unregister", "--local-only"],
      ["credentials", "move", "--to", "file"],
    ]) {
      const noDir = await runCli([...verb, "--state-dir", path.join(dir, "nowhere")]);
      assert.equal(noDir.code, ExitCode.NEEDS_OPERATOR, noDir.all);
      assert.match(noDir.stderr, /no runner is registered in .*nowhere: there is no such dir/);
    }

    const unknownVerb = await runCli(["frobnicate"]);
    assert.equal(unknownVerb.code, ExitCode.USAGE);

    const configFile = path.join(dir, "config.json");
    await fs.writeFile(configFile, "{ not json");
    const badConfig = await runCli(["status", "--config", configFile, ...flags]);
    assert.equal(badConfig.code, ExitCode.USAGE);
    assert.match(badConfig.stderr, /config\.json is not valid JSON/);

    const unreachable = await runCli([
      "register",
      "--url",
      "http://127.0.0.1:9",
      "--token",
      "rgt_x",
      ...flags,
      "--request-timeout-ms",
      "2000",
    ]);
    assert.equal(unreachable.code, ExitCode.UNAVAILABLE);
    assert.match(unreachable.stderr, /cannot reach the control plane at http:\/\/127\.0\.0\.1:9/);
  });

  test("status of a state dir this user cannot read says so and still exits 0", { timeout: 60_000 }, async (t) => {
    // EACCES needs a user who is not root, and root to make one's dir unreadable to it.
    const nobody = 65534;
    if (process.getuid?.() !== 0) return t.skip("needs root, to run status as another user");
    const probe = await runCli(["--version"], { uid: nobody, env: { HOME: "/" } }).catch(() => null);
    if (probe?.code !== 0) return t.skip("the checkout is not readable by uid 65534");
    const dir = await tempDir(t);
    await fs.chmod(dir, 0o755);
    const stateDir = path.join(dir, "state");
    await fs.mkdir(stateDir, { mode: 0o700 });
    await fs.writeFile(path.join(stateDir, "registration.json"), "{}", { mode: 0o600 });
    const text = await runCli(["status", "--state-dir", stateDir], { uid: nobody, env: { HOME: "/" } });
    assert.equal(text.code, ExitCode.OK, text.all);
    assert.doesNotMatch(text.all, /unexpected error/);
    assert.match(text.stdout, /cannot read the state dir .*: EACCES \(it belongs to root\)/);
    assert.match(text.stdout, /lock: unknown/);
    const json = await runCli(["status", "--json", "--state-dir", stateDir], { uid: nobody, env: { HOME: "/" } });
    assert.equal(json.code, ExitCode.OK, json.all);
    const view = JSON.parse(json.stdout) as { registered: boolean; lock: { state: string }; daemon: unknown };
    assert.equal(view.registered, false);
    assert.equal(view.lock.state, "unknown");
    assert.equal(view.daemon, null);
  });

  test("settings come from the config file when no flag or env var is given", { timeout: 60_000 }, async (t) => {
    const plane = await startTestControlPlane(t);
    const dir = await tempDir(t);
    const stateDir = path.join(dir, "from-config");
    const configFile = path.join(dir, "config.json");
    await fs.writeFile(configFile, JSON.stringify({ stateDir, credentialStore: "file" }));
    const register = await runCli([
      "register",
      "--config",
      configFile,
      "--url",
      plane.cp.url,
      "--token-file",
      await plane.tokenFile(dir),
    ]);
    assert.equal(register.code, ExitCode.OK, register.all);
    await fs.access(path.join(stateDir, "credential"));
    const viaEnv = await runCli(["status", "--json"], { env: { RUNNER_CONFIG: configFile } });
    assert.equal((JSON.parse(viaEnv.stdout) as { stateDir: string }).stateDir, stateDir);
  });

  test(
    "unregister removes the runner on the control plane and the credential here, keeping the outbox",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      await fs.writeFile(path.join(runner.stateDir, "outbox", "r.json"), "{}");
      const result = await runCli(["unregister", ...runner.flags]);
      assert.equal(result.code, ExitCode.OK, result.all);
      assert.deepEqual(await plane.admin.listRunners(), []);
      await assert.rejects(fs.access(path.join(runner.stateDir, "credential")));
      await assert.rejects(fs.access(path.join(runner.stateDir, "registration.json")));
      assert.deepEqual(await fs.readdir(path.join(runner.stateDir, "outbox")), ["r.json"]);
      const verify = await runCli(["verify", ...runner.flags]);
      assert.match(verify.stdout, /\[not_registered\]/);
    },
  );
});
