// `npm run test:faults`: the fault suite (issue 9). Not part of `npm test` (its files are not
// *.test.js). A seeded run of: the fault loop (kill -9, control-plane restarts, black holes,
// cuts, latency, race windows held open with SIGSTOP) with its audit, then fuzzed frames
// against the runner and against the control plane. Prints its counts and fails when anything
// was lost, applied twice, orphaned or crashed.
//
// FAULTS_SEED=<n> replays a run; FAULTS_SCALE=<0.1..4> scales every count (default 1).
import { after, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { runFaultLoop } from "./fault-loop.js";
import { runRunnerFuzz } from "./fuzz-runner.js";
import { runControlPlaneFuzz } from "./fuzz-control-plane.js";
import { killMarkedProcesses } from "./marked-jobs.js";
import { Prng } from "./prng.js";
import { Tally } from "./tally.js";
import { onCleanup } from "../helpers/cleanup.js";

if (process.platform !== "linux") throw new Error("the fault suite reads /proc: it runs on Linux only");

const prng = Prng.fromEnv();
const scale = Number(process.env.FAULTS_SCALE ?? "1");
if (!(scale >= 0.1 && scale <= 4))
  throw new Error(`FAULTS_SCALE must be a number from 0.1 to 4, not ${process.env.FAULTS_SCALE}`);
const tally = new Tally();
const runMark = `fm${prng.seed.toString(36)}x${process.pid}`;
const began = performance.now();
const log = (line: string) =>
  process.stdout.write(`# [${((performance.now() - began) / 1000).toFixed(1)} s] ${line}\n`);
log(`fault suite: seed ${prng.seed} (replay: FAULTS_SEED=${prng.seed}), scale ${scale}, mark ${runMark}`);

async function phaseRoot(name: string): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), `runner-faults-${name}-`));
}

after(async () => {
  // Whatever a failed phase left running goes; the count was taken before.
  killMarkedProcesses(runMark);
  process.stdout.write(tally.summary(prng.seed, performance.now() - began) + "\n");
  // Unref'd: it fires only if something the phases left open keeps the process up, which
  // would otherwise hold CI until its deadline.
  setTimeout(() => {
    process.stderr.write("the fault suite's process stayed up 30 s after its tests: a socket, timer or child leaked\n");
    process.exit(1);
  }, 30_000).unref();
});

// Each phase gets its own PRNG stream, so changing one phase does not reshuffle another.
const loopPrng = prng.fork();
const runnerFuzzPrng = prng.fork();
const cpFuzzPrng = prng.fork();

test(
  "injected faults lose no job, apply no result twice and leave no job process behind",
  { timeout: 360_000 },
  async (t) => {
    const root = await phaseRoot("loop");
    onCleanup(t, () => fs.rm(root, { recursive: true, force: true }));
    await runFaultLoop({ t, prng: loopPrng, tally, scale, runMark, root, log });
    assert.ok(
      tally.faultsInjected >= Math.min(200, Math.floor(200 * scale)),
      `only ${tally.faultsInjected} faults were injected`,
    );
    assert.deepEqual(
      { lost: tally.lost, appliedTwice: tally.appliedTwice, orphans: tally.orphans, crashes: tally.crashes },
      { lost: 0, appliedTwice: 0, orphans: 0, crashes: 0 },
      tally.findings.join("\n"),
    );
  },
);

/** A fuzz phase passes when it added no crash and no lost job to the tally. */
function fuzzPhase(
  name: string,
  root: string,
  fuzz: (options: { t: TestContext; root: string }) => Promise<void>,
): void {
  test(name, { timeout: 180_000 }, async (t) => {
    const dir = await phaseRoot(root);
    onCleanup(t, () => fs.rm(dir, { recursive: true, force: true }));
    const before = tally.crashes + tally.lost;
    await fuzz({ t, root: dir });
    assert.equal(tally.crashes + tally.lost - before, 0, tally.findings.join("\n"));
  });
}

fuzzPhase(
  "fuzzed control-plane frames crash neither the daemon nor a worker, and a normal job runs afterwards",
  "rfuzz",
  ({ t, root }) =>
    runRunnerFuzz({ t, prng: runnerFuzzPrng, tally, frames: Math.round(800 * scale), root, runMark, log }),
);

fuzzPhase(
  "fuzzed runner frames do not crash the control plane, which keeps serving another runner",
  "cfuzz",
  ({ t, root }) =>
    runControlPlaneFuzz({ t, prng: cpFuzzPrng, tally, frames: Math.round(800 * scale), root, runMark, log }),
);
