// The crash window between a command job's spawn and the daemon learning its pid, held open on
// purpose: the daemon is stopped (SIGSTOP) before its worker spawns the job, so the worker's
// `started` report sits unread in the IPC pipe; then the worker and the daemon are killed. The
// next start must still find the job's process group and kill it.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { registerRunner, startTestControlPlane } from "../helpers/fixtures.js";
import { startDaemon } from "../helpers/daemon.js";
import { childrenOf, isRunning } from "../helpers/processes.js";
import type { JobView } from "../../src/protocol/http.js";
import { listLiveGroupMembers as groupMembers } from "../../src/jobs/process-group.js";
import { onCleanup } from "../helpers/cleanup.js";

const linuxOnly = process.platform === "linux" ? false : "reads /proc to find the job's processes";
const FAST = ["--reconnect-base-ms", "100", "--reconnect-cap-ms", "400"];
const finished = (job: JobView) => ["succeeded", "failed", "cancelled", "timed_out"].includes(job.status);

async function waitFor<T>(check: () => Promise<T | null> | T | null, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== null) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Pids whose command line contains the marker. */
function pidsWithArg(marker: string): number[] {
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .filter((e) => {
      try {
        return readFileSync(`/proc/${e}/cmdline`, "utf8").split("\0").includes(marker);
      } catch {
        return false;
      }
    })
    .map(Number);
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // already gone
  }
}

describe("a crash between a command job's spawn and the daemon learning its pid", { skip: linuxOnly }, () => {
  test(
    "the next start kills the job's whole process group and reports it failed once: agent restarted",
    { timeout: 90_000 },
    async (t) => {
      const plane = await startTestControlPlane(t, { heartbeatIntervalMs: 1_000 });
      const runner = await registerRunner(t, plane);
      const first = startDaemon(t, [...runner.flags, ...FAST]);
      await first.waitForLog((l) => l.msg === "connected to the control plane", 20_000);
      const daemonPid = first.child.pid!;
      onCleanup(t, () => signal(daemonPid, "SIGKILL"));

      // A warm worker, idle.
      const { job: warmUp } = await plane.admin.submitJob({ job: { kind: "command", argv: ["true"], env: {} } });
      await waitFor(
        async () => (finished((await plane.admin.getJob(warmUp.jobId)).job) ? true : null),
        "the warm-up job",
      );
      const workers = await waitFor(() => {
        const found = childrenOf(daemonPid).filter((pid) =>
          readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("runner-worker"),
        );
        return found.length === 1 ? found : null;
      }, "one idle worker");
      const worker = workers[0]!;
      onCleanup(t, () => signal(worker, "SIGKILL"));

      // The worker is stopped, so the `run` message waits in its pipe; once the runner has sent
      // `accept` (written after it handed the job to the worker), the daemon is stopped too.
      signal(worker, "SIGSTOP");
      const accepted = new Set<string>();
      plane.cp.events.on(
        "job",
        (e: { jobId: string; status: string }) => e.status === "accepted" && accepted.add(e.jobId),
      );
      const applied: string[] = [];
      plane.cp.events.on(
        "job",
        (e: { jobId: string; status: string }) => e.status === "result_applied" && applied.push(e.jobId),
      );
      const marker = `orphan-race-${process.pid}-${Date.now()}`;
      const ready = path.join(runner.stateDir, "..", "ready");
      // 128 KiB of output first: more than a pipe holds, so `ready` appears only once the worker
      // has begun reading the job's output, which it does after reporting the pid.
      const script = `head -c 131072 /dev/zero; sleep 300 & echo $! > ${ready}; wait`;
      const { job } = await plane.admin.submitJob({
        job: { kind: "command", argv: ["sh", "-c", script, marker], env: {} },
      });
      await waitFor(() => (accepted.has(job.jobId) ? true : null), "the runner's accept");
      signal(daemonPid, "SIGSTOP");
      signal(worker, "SIGCONT");

      const sleeper = await waitFor(async () => {
        const text = await fs.readFile(ready, "utf8").catch(() => "");
        return text.endsWith("\n") ? Number(text.trim()) : null;
      }, "the job's child");
      const [leader] = pidsWithArg(marker);
      assert.ok(leader !== undefined, "the job's leader runs");
      onCleanup(t, () => signal(-leader, "SIGKILL"));
      assert.deepEqual(
        groupMembers(leader).sort(),
        [leader, sleeper].sort(),
        "the job's group: its leader and its child",
      );

      // Both die before the daemon ever read the pid.
      signal(worker, "SIGKILL");
      signal(daemonPid, "SIGKILL");
      await first.exited;
      assert.ok(isRunning(leader) && isRunning(sleeper), "the job's group outlived its daemon and worker");

      const second = startDaemon(t, [...runner.flags, ...FAST]);
      await second.waitForLog((l) => /orphaned job\(s\) as failed: agent restarted/.test(l.msg), 20_000);
      await waitFor(
        () => (groupMembers(leader).length === 0 ? true : null),
        "every process of the job to be gone",
        10_000,
      );
      const killedLine = second.lines.find((l) => /killed the process tree of a job orphaned/.test(l.msg));
      assert.ok(killedLine !== undefined, second.stderr());
      assert.deepEqual(
        [killedLine.jobId, killedLine.jobPid, killedLine.pid],
        [job.jobId, leader, second.child.pid],
        "pid is the daemon's own; the job's is jobPid",
      );

      const done = await waitFor(async () => {
        const view = (await plane.admin.getJob(job.jobId)).job;
        return finished(view) ? view : null;
      }, "the job's result");
      assert.deepEqual([done.status, done.result?.reason, done.attempt], ["failed", "agent restarted", 1]);
      await waitFor(
        async () =>
          (await fs.readdir(path.join(runner.stateDir, "outbox"))).some((f) => f.endsWith(".json")) ? null : true,
        "the outbox to empty",
      );
      assert.deepEqual(
        applied.filter((id) => id === job.jobId),
        [job.jobId],
        "the result was applied exactly once",
      );
      assert.deepEqual(await fs.readdir(path.join(runner.stateDir, "running")), [], "the journal is clear");
      await second.stop("SIGTERM");
    },
  );
});
