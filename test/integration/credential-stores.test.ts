// The credential stores against the real thing: a real Secret Service (started by
// scripts/run-tests.mjs through dbus-run-session + gnome-keyring-daemon) and real files.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { KeychainCredentialStore } from "../../src/credentials/keychain-store.js";
import { FileCredentialStore } from "../../src/credentials/file-store.js";
import { chooseStore } from "../../src/credentials/select.js";
import { registerRunner, requireKeychain, startTestControlPlane, tempDir } from "../helpers/fixtures.js";

const value = {
  v: 1 as const,
  runnerId: "rnr_abcdefghijklmnopqrstuvwx",
  url: "http://127.0.0.1:1",
  credential: "rnc_" + "k".repeat(43),
};

describe("keychain credential store", () => {
  test("writes, reads back and removes an entry in the real Secret Service", { timeout: 30_000 }, async (t) => {
    if (!requireKeychain(t)) return;
    const store = new KeychainCredentialStore(`/test/${process.pid}/${Date.now()}`);
    assert.deepEqual(await store.read(), { kind: "missing" });
    await store.write(value);
    assert.deepEqual(await store.read(), { kind: "ok", value });
    assert.equal(await store.remove(), true);
    assert.deepEqual(await store.read(), { kind: "missing" });
    assert.equal(await store.remove(), false);
  });

  test("entries for two state dirs do not collide", { timeout: 30_000 }, async (t) => {
    if (!requireKeychain(t)) return;
    const a = new KeychainCredentialStore(`/test/a-${Date.now()}`);
    const b = new KeychainCredentialStore(`/test/b-${Date.now()}`);
    await a.write(value);
    await b.write({ ...value, credential: "rnc_" + "z".repeat(43) });
    const readA = await a.read();
    assert.equal(readA.kind === "ok" && readA.value.credential, value.credential);
    await a.remove();
    await b.remove();
  });

  test(
    "auto picks the keychain when it works and says so; registration records it and writes no credential file",
    { timeout: 30_000 },
    async (t) => {
      if (!requireKeychain(t)) return;
      const dir = await tempDir(t);
      const choice = await chooseStore("auto", { stateDir: dir, credentialFile: path.join(dir, "credential") });
      assert.equal(choice.store.kind, "keychain");
      assert.match(choice.why, /keychain works/);

      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane, { store: "auto" });
      const registration = JSON.parse(await fs.readFile(path.join(runner.stateDir, "registration.json"), "utf8")) as {
        credentialStore: string;
      };
      assert.equal(registration.credentialStore, "keychain");
      await assert.rejects(fs.access(path.join(runner.stateDir, "credential")), { code: "ENOENT" });
      await new KeychainCredentialStore(runner.stateDir).remove();
    },
  );

  test(
    "a keychain call that never answers (a prompt nobody sees) is given up at the timeout, however the native side ignores its abort",
    { timeout: 30_000 },
    async () => {
      const calls: string[] = [];
      const never =
        <T>(name: string) =>
        (): Promise<T> => (calls.push(name), new Promise<T>(() => undefined));
      const open = async () => ({
        getPassword: never<string | null>("get"),
        setPassword: never<void>("set"),
        deleteCredential: never<boolean>("delete"),
      });
      const store = new KeychainCredentialStore("/test/hung", { timeoutMs: 200, open });
      const read = await store.read();
      assert.equal(read.kind, "unavailable");
      assert.match(read.kind === "unavailable" ? read.reason : "", /did not answer within 0\.2 s/);
      await assert.rejects(store.write(value), {
        code: "keychain_unavailable",
        message: /did not answer within 0\.2 s/,
      });
      await assert.rejects(store.remove(), { code: "keychain_unavailable" });
      const probe = await KeychainCredentialStore.probe({ timeoutMs: 200, open });
      assert.equal(probe.usable, false);
      assert.match(probe.usable ? "" : probe.reason, /did not answer/);
      assert.deepEqual(calls, ["get", "set", "delete", "set"]);
    },
  );

  test(
    "without a session bus, the keychain is reported unusable and auto falls back to a file, saying why",
    { timeout: 30_000 },
    async () => {
      const { spawnSync } = await import("node:child_process");
      const script = `
      import { chooseStore } from ${JSON.stringify(path.resolve("dist/src/credentials/select.js"))};
      const c = await chooseStore("auto", { stateDir: "/tmp/x", credentialFile: "/tmp/x/credential" });
      console.log(JSON.stringify({ kind: c.store.kind, why: c.why }));`;
      const env = { ...process.env, DBUS_SESSION_BUS_ADDRESS: "unix:path=/nonexistent/bus" };
      const run = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
        env,
        encoding: "utf8",
        timeout: 20_000,
      });
      assert.equal(run.status, 0, run.stderr);
      const chosen = JSON.parse(run.stdout) as { kind: string; why: string };
      assert.equal(chosen.kind, "file");
      assert.match(chosen.why, /using a 0600 file because the .* is not usable/);
    },
  );
});

describe("file credential store", () => {
  test(
    "writes the credential 0600, reads it back, and reports a damaged file as invalid without quoting it",
    { timeout: 30_000 },
    async (t) => {
      const dir = await tempDir(t);
      const store = new FileCredentialStore(path.join(dir, "credential"));
      await store.write(value);
      assert.equal((await fs.stat(store.location)).mode & 0o777, 0o600);
      assert.deepEqual(await store.read(), { kind: "ok", value });
      await fs.writeFile(store.location, JSON.stringify({ ...value, credential: "short" }));
      const damaged = await store.read();
      assert.equal(damaged.kind, "invalid");
      assert.ok(!JSON.stringify(damaged).includes("short"));
    },
  );
});
