// The daemon's JSON log lines about a job carry its facts as fields, and never overwrite the
// logger's own: `pid` is the daemon's, the job's process is `jobPid`.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { registerRunner, startTestControlPlane } from "../helpers/fixtures.js";
import { startDaemon } from "../helpers/daemon.js";

describe("the daemon's log lines about a job", () => {
  test(
    "the start is logged at info with jobId, attempt and jobPid, the end with outcome and reason, and pid stays the daemon's",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const daemon = startDaemon(t, runner.flags);
      await daemon.waitForLog((l) => l.msg === "connected to the control plane", 20_000);
      const { job } = await plane.admin.submitJob({
        job: { kind: "command", argv: ["sh", "-c", "echo $$; exit 3"], env: {} },
      });

      const started = await daemon.waitForLog((l) => l.jobId === job.jobId && l.jobPid !== undefined, 20_000);
      const finished = await daemon.waitForLog((l) => l.jobId === job.jobId && l.outcome !== undefined, 20_000);
      const daemonPid = daemon.child.pid;
      assert.equal(started.level, 30, "info");
      assert.deepEqual([started.attempt, started.pid, started.kind], [1, daemonPid, "command"]);
      assert.ok(
        Number.isInteger(started.jobPid) && started.jobPid !== daemonPid,
        `jobPid ${String(started.jobPid)} is the job's process`,
      );
      const { logs } = await plane.admin.getJob(job.jobId);
      assert.equal(
        Number(
          logs
            .map((l) => l.data)
            .join("")
            .trim(),
        ),
        started.jobPid,
        "the very process the job itself reports",
      );
      assert.deepEqual(
        [finished.level, finished.attempt, finished.outcome, finished.reason, finished.pid],
        [30, 1, "failed", "exited with code 3", daemonPid],
      );
      assert.ok(
        daemon.lines.every((l) => l.pid === undefined || l.pid === daemonPid),
        "no line carries another process's pid as pid",
      );
      await daemon.stop("SIGTERM");
    },
  );
});
