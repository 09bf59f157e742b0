// The program as a whole, run as a child process the way an operator runs it.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { REPO_ROOT, runCli } from "../helpers/cli.js";
import { PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { repeatedOption } from "../../src/program.js";

test(
  "--version names the agent, protocol and Node.js versions and the platform, and exits 0",
  { timeout: 30_000 },
  async () => {
    const { version } = JSON.parse(readFileSync(path.join(REPO_ROOT, "package.json"), "utf8")) as { version: string };
    for (const flag of ["--version", "-V"]) {
      const result = await runCli([flag]);
      assert.equal(result.code, 0, result.all);
      assert.equal(
        result.stdout.trim(),
        `runner ${version} (protocol ${PROTOCOL_VERSION}; Node.js ${process.versions.node}; ${process.platform}-${process.arch})`,
      );
    }
  },
);

test(
  "an option given twice is exit 2 naming it, on every verb, before anything runs",
  { timeout: 30_000 },
  async () => {
    for (const [flag, args] of [
      ["--capacity", ["start", "--capacity", "2", "--capacity=3"]],
      ["--json", ["status", "--json", "--json"]],
      ["--token-file", ["register", "--url", "https://cp.example.com", "--token-file", "a", "--token-file", "b"]],
    ] as const) {
      const result = await runCli([...args]);
      assert.equal(result.code, 2, result.all);
      assert.match(result.stderr, new RegExp(`option '${flag}' given more than once`));
    }
    assert.equal(repeatedOption(["start", "--state-dir", "/s", "--", "--state-dir"]), null, "nothing after --");
    assert.equal(repeatedOption(["status", "--help", "--help"]), null);
    assert.equal((await runCli(["status", "--help", "--help"])).code, 0);
  },
);
