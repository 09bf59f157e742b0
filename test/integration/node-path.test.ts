// Which node a service unit runs, against real files laid out as Homebrew and a PATH link do.
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { homebrewOptPath, stableNodePath } from "../../src/service/node-path.js";
import { tempDir } from "../helpers/fixtures.js";

test("a node in Homebrew's Cellar maps to its opt link; other paths do not", { timeout: 10_000 }, () => {
  assert.equal(homebrewOptPath("/opt/homebrew/Cellar/node@20/20.11.1/bin/node"), "/opt/homebrew/opt/node@20/bin/node");
  assert.equal(homebrewOptPath("/usr/local/Cellar/node/22.3.0/bin/node"), "/usr/local/opt/node/bin/node");
  assert.equal(homebrewOptPath("/usr/bin/node"), null);
  assert.equal(homebrewOptPath("/home/u/.nvm/versions/node/v20.11.1/bin/node"), null);
});

test(
  "the unit runs the upgrade-proof path of the very same node, else the running one",
  { timeout: 20_000 },
  async (t) => {
    const root = await tempDir(t);
    const cellar = path.join(root, "Cellar", "node", "20.11.1", "bin");
    await fs.mkdir(cellar, { recursive: true });
    const versioned = path.join(cellar, "node");
    await fs.writeFile(versioned, "#!/bin/sh\n", { mode: 0o755 });

    // No opt link, nothing on PATH: the running path.
    assert.equal(stableNodePath(versioned, ""), versioned);
    // A PATH link to this node (as /usr/local/bin/node is to Homebrew's): preferred.
    const bin = path.join(root, "bin");
    await fs.mkdir(bin);
    await fs.symlink(versioned, path.join(bin, "node"));
    assert.equal(stableNodePath(versioned, bin), path.join(bin, "node"));
    // Homebrew's opt link to the same keg: preferred over PATH.
    await fs.mkdir(path.join(root, "opt"));
    await fs.symlink(path.join(root, "Cellar", "node", "20.11.1"), path.join(root, "opt", "node"));
    assert.equal(stableNodePath(versioned, bin), path.join(root, "opt", "node", "bin", "node"));

    // A node whose own dir is on PATH stays as it is; a PATH node that is another node is never taken.
    const other = path.join(root, "other");
    await fs.mkdir(other);
    await fs.writeFile(path.join(other, "node"), "#!/bin/sh\n", { mode: 0o755 });
    assert.equal(stableNodePath(path.join(other, "node"), `${bin}:${other}`), path.join(other, "node"));
    assert.equal(stableNodePath(path.join(other, "node"), bin), path.join(other, "node"));
  },
);
