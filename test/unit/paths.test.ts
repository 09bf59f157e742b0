import { test } from "node:test";
import assert from "node:assert/strict";
import { defaultDirs } from "../../src/config/paths.js";

test("on Linux the dirs follow XDG", () => {
  const dirs = defaultDirs({
    platform: "linux",
    env: { XDG_CONFIG_HOME: "/c", XDG_STATE_HOME: "/s" },
    home: "/home/u",
    system: false,
  });
  assert.deepEqual(dirs, { configDir: "/c/runner", stateDir: "/s/runner" });
});

test("on Linux without XDG variables the XDG defaults under home are used", () => {
  const dirs = defaultDirs({ platform: "linux", env: {}, home: "/home/u", system: false });
  assert.deepEqual(dirs, { configDir: "/home/u/.config/runner", stateDir: "/home/u/.local/state/runner" });
});

test("a relative XDG path is ignored, as the spec requires", () => {
  const dirs = defaultDirs({
    platform: "linux",
    env: { XDG_STATE_HOME: "relative/state" },
    home: "/home/u",
    system: false,
  });
  assert.equal(dirs.stateDir, "/home/u/.local/state/runner");
});

test("a Linux system service uses /etc and /var/lib", () => {
  assert.deepEqual(defaultDirs({ platform: "linux", env: {}, home: "/root", system: true }), {
    configDir: "/etc/runner",
    stateDir: "/var/lib/runner",
  });
});

test("on macOS the dirs are under Application Support", () => {
  const user = defaultDirs({ platform: "darwin", env: {}, home: "/Users/u", system: false });
  assert.equal(user.configDir, "/Users/u/Library/Application Support/runner");
  const system = defaultDirs({ platform: "darwin", env: {}, home: "/var/root", system: true });
  assert.equal(system.stateDir, "/Library/Application Support/runner/state");
});

test("on Windows the dirs are under LOCALAPPDATA, or PROGRAMDATA for a service", () => {
  const user = defaultDirs({
    platform: "win32",
    env: { LOCALAPPDATA: "C:\\Users\\u\\AppData\\Local" },
    home: "C:\\Users\\u",
    system: false,
  });
  assert.equal(user.configDir, "C:\\Users\\u\\AppData\\Local\\runner");
  const system = defaultDirs({
    platform: "win32",
    env: { PROGRAMDATA: "C:\\ProgramData" },
    home: "C:\\",
    system: true,
  });
  assert.equal(system.stateDir, "C:\\ProgramData\\runner\\state");
});
