// `runner credentials move` for real: the CLI as a child process, a real control plane on
// loopback, the real Secret Service (started by scripts/run-tests.mjs) and real files.
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { runCli } from "../helpers/cli.js";
import { registerRunner, requireKeychain, startTestControlPlane } from "../helpers/fixtures.js";
import { ExitCode } from "../../src/errors.js";
import { KeychainCredentialStore } from "../../src/credentials/keychain-store.js";
import { acquireLock } from "../../src/state/lock.js";
import { onCleanup } from "../helpers/cleanup.js";

async function storeOf(stateDir: string): Promise<string> {
  const registration = JSON.parse(await fs.readFile(path.join(stateDir, "registration.json"), "utf8")) as {
    credentialStore: string;
  };
  return registration.credentialStore;
}

describe("runner credentials move", () => {
  test(
    "moves the credential from the keychain to the file and back; the runner stays healthy each time",
    { timeout: 60_000 },
    async (t) => {
      if (!requireKeychain(t)) return;
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane, { store: "keychain" });
      const flags = runner.flags;
      const keychain = new KeychainCredentialStore(runner.stateDir);
      onCleanup(t, () => keychain.remove().catch(() => undefined));
      const before = await keychain.read();
      assert.equal(before.kind, "ok");

      const toFile = await runCli(["credentials", "move", "--to", "file", ...flags]);
      assert.equal(toFile.code, ExitCode.OK, toFile.all);
      assert.match(toFile.stdout, /moved the credential from the keychain store to the file store/);
      assert.equal(await storeOf(runner.stateDir), "file");
      const file = path.join(runner.stateDir, "credential");
      assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
      assert.equal(
        JSON.parse(await fs.readFile(file, "utf8")).credential,
        before.kind === "ok" && before.value.credential,
      );
      assert.deepEqual(await keychain.read(), { kind: "missing" }, "the keychain copy is gone");
      const verifyFile = await runCli(["verify", ...flags]);
      assert.equal(verifyFile.code, ExitCode.OK, verifyFile.all);

      const again = await runCli(["credentials", "move", "--to", "file", ...flags]);
      assert.equal(again.code, ExitCode.OK, again.all);
      assert.match(again.stdout, /already in the file store; nothing to do/);

      const back = await runCli(["credentials", "move", "--to", "keychain", ...flags]);
      assert.equal(back.code, ExitCode.OK, back.all);
      assert.equal(await storeOf(runner.stateDir), "keychain");
      await assert.rejects(fs.access(file), { code: "ENOENT" });
      const verifyKeychain = await runCli(["verify", ...flags]);
      assert.equal(verifyKeychain.code, ExitCode.OK, verifyKeychain.all);
    },
  );

  test("is refused while a runner holds the state dir's lock, and changes nothing", { timeout: 60_000 }, async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane, { store: "file" });
    const lock = await acquireLock(path.join(runner.stateDir, "runner.lock"));
    onCleanup(t, () => lock.release());
    const move = await runCli(["credentials", "move", "--to", "keychain", ...runner.flags]);
    assert.equal(move.code, ExitCode.ALREADY_RUNNING, move.all);
    assert.equal(await storeOf(runner.stateDir), "file");
    await fs.access(path.join(runner.stateDir, "credential"));
  });

  test("needs --to with a known store", { timeout: 60_000 }, async () => {
    const missing = await runCli(["credentials", "move"]);
    assert.equal(missing.code, ExitCode.USAGE);
    assert.match(missing.stderr, /--to <store>/);
    const wrong = await runCli(["credentials", "move", "--to", "vault"]);
    assert.equal(wrong.code, ExitCode.USAGE);
    assert.match(wrong.stderr, /Allowed choices are file, keychain/);
  });
});
