// The daemon holds V8's optimizing compiler off while it starts and releases it at its first
// connect (src/daemon/optimizer.ts). This checks, on the Node.js that runs the tests, that the
// flags it sets at run time do what it counts on: held, a hot function stays unoptimized;
// released, the same function is optimized. A Node.js whose V8 renamed or froze the flag fails here.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { REPO_ROOT } from "../helpers/cli.js";

const OPTIMIZER = path.join(REPO_ROOT, "dist", "src", "daemon", "optimizer.js");

// Runs in a child with --allow-natives-syntax. Bit 16 of %GetOptimizationStatus is "optimized"
// (v8/src/runtime/runtime-test.cc). Tier-up happens on a background thread, so the released
// phase calls until it sees the bit, bounded in time; the held phase makes many more calls
// than that usually takes and must never see it.
const CHILD = `
const { holdOptimizingCompiler, releaseOptimizingCompiler } = await import(${JSON.stringify(OPTIMIZER)});
function hot(a, b) { return (a * 31 + b) % 1000003; }
const optimized = () => (%GetOptimizationStatus(hot) & 16) !== 0;
const run = (until, ms) => {
  const end = Date.now() + ms;
  let x = 1;
  while (Date.now() < end && !until()) for (let i = 0; i < 100000; i++) x = hot(x, i);
  return x;
};
holdOptimizingCompiler();
run(() => false, 1500);
const whileHeld = optimized();
releaseOptimizingCompiler();
run(optimized, 20000);
console.log(JSON.stringify({ whileHeld, afterRelease: optimized() }));
`;

test(
  "a hot function is not optimized while the daemon holds the compiler, and is once it lets go",
  { timeout: 60_000 },
  async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--allow-natives-syntax", "--input-type=module", "-e", CHILD],
      { timeout: 50_000 },
    );
    assert.deepEqual(JSON.parse(stdout), { whileHeld: false, afterRelease: true });
  },
);
