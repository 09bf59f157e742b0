// The running-jobs journal and crash recovery against real files and real process groups:
// what a daemon restarted after kill -9 finds, kills, and must leave alone.
import { test, describe, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { promises as fs, readdirSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { JobJournal, recoverOrphans, type JournalEntry } from "../../src/jobs/journal.js";
import { processStartTime } from "../../src/state/process-start.js";
import { jobMarks } from "../../src/jobs/job-marks.js";
import { onCleanup } from "../helpers/cleanup.js";

const posixOnly = process.platform === "win32" ? "needs POSIX process groups and sh" : false;
const onLinux = process.platform === "linux";

async function tempDir(t: TestContext): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "runner-journal-"));
  onCleanup(t, () => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

function entry(jobId: string, fields: Partial<JournalEntry> = {}): JournalEntry {
  return { jobId, attempt: 1, pid: null, pgid: null, processStartTime: null, startedAt: null, ...fields };
}

function killQuietly(target: number): void {
  try {
    process.kill(target, "SIGKILL");
  } catch {
    // already gone
  }
}

/** Linux: the group's members that are not zombies, read from /proc. Elsewhere: whether kill(-pgid, 0) succeeds. */
function groupHasLiveMembers(pgid: number): boolean {
  if (!onLinux) {
    try {
      process.kill(-pgid, 0);
      return true;
    } catch {
      return false;
    }
  }
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .some((e) => {
      try {
        const stat = readFileSync(`/proc/${e}/stat`, "utf8");
        const [state, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        return Number(pgrp) === pgid && state !== "Z";
      } catch {
        return false;
      }
    });
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  if (!onLinux) return true;
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0] !== "Z";
  } catch {
    return false;
  }
}

/** A detached process group like an orphaned job: `sh` leading it, with `sleep` children. Resolves once both exist. */
async function spawnGroup(
  t: TestContext,
  script: string,
  env?: Record<string, string>,
): Promise<{ child: ChildProcess; pid: number; childPid: number }> {
  const child = spawn("sh", ["-c", script], {
    detached: true,
    stdio: ["ignore", "pipe", "ignore"],
    env: env && { ...process.env, ...env },
  });
  const pid = child.pid as number;
  onCleanup(t, () => killQuietly(-pid));
  let out = "";
  child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
  while (!out.includes("\n")) await once(child.stdout as NodeJS.ReadableStream, "data");
  child.stdout?.destroy();
  child.unref();
  return { child, pid, childPid: Number(out.trim()) };
}

describe("job journal", () => {
  test("records, lists, re-records and removes entries, one file per job attempt", { timeout: 20_000 }, async (t) => {
    const dir = path.join(await tempDir(t), "running");
    const journal = new JobJournal(dir);
    assert.deepEqual(await journal.list(), { entries: [], setAside: [] }, "a missing directory is an empty journal");

    await journal.record(entry("job-a"));
    await journal.record(
      entry("job-a", { pid: 4242, pgid: 4242, processStartTime: "123", startedAt: "2024-01-01T00:00:00.000Z" }),
    );
    await journal.record(entry("job-a", { attempt: 2 }));
    await journal.record(entry("../../etc/passwd"));
    const { entries } = await journal.list();
    assert.equal(entries.length, 3);
    assert.deepEqual(entries.find((e) => e.jobId === "job-a" && e.attempt === 1)?.pid, 4242);
    const names = await fs.readdir(dir);
    assert.equal(names.length, 3);
    assert.ok(
      names.every((n) => !n.includes("/") && !n.startsWith(".")),
      names.join(","),
    );

    await journal.remove({ jobId: "job-a", attempt: 1 });
    await journal.remove({ jobId: "job-a", attempt: 1 }); // twice is fine
    await journal.remove({ jobId: "never-there", attempt: 9 });
    assert.deepEqual((await journal.list()).entries.map((e) => [e.jobId, e.attempt]).sort(), [
      ["../../etc/passwd", 1],
      ["job-a", 2],
    ]);
  });

  test("concurrent records of one entry land in call order", { timeout: 20_000 }, async (t) => {
    const journal = new JobJournal(await tempDir(t));
    await Promise.all([
      journal.record(entry("job-c")),
      journal.record(entry("job-c", { pid: 77 })),
      journal.record(entry("job-c", { pid: 78 })),
    ]);
    assert.deepEqual(
      (await journal.list()).entries.map((e) => e.pid),
      [78],
    );
  });

  test("a corrupted or misshapen file is moved aside, reported and skipped", { timeout: 20_000 }, async (t) => {
    const dir = await tempDir(t);
    const journal = new JobJournal(dir);
    await journal.record(entry("good"));
    await fs.writeFile(path.join(dir, "torn.1.json"), '{"jobId": "torn", "attem');
    await fs.writeFile(path.join(dir, "odd.1.json"), JSON.stringify({ jobId: "odd", attempt: -1 }));
    await fs.writeFile(path.join(dir, ".good.1.json.123.456.tmp"), "half-written temp file");

    const { entries, setAside } = await journal.list();
    assert.deepEqual(
      entries.map((e) => e.jobId),
      ["good"],
    );
    assert.equal(setAside.length, 2);
    for (const bad of setAside) {
      assert.match(bad.file, /\.json\.corrupt-/);
      await fs.access(bad.file); // kept for a person to look at
    }
    const names = await fs.readdir(dir);
    assert.ok(!names.includes("torn.1.json") && !names.includes("odd.1.json"));
    assert.deepEqual((await journal.list()).setAside, [], "a set-aside file is not reported again");
  });
});

describe("recovering orphaned jobs after a crash", { skip: posixOnly }, () => {
  const now = new Date("2024-05-01T12:00:00.000Z");

  test(
    "kills a still-running job's whole process group and reports it failed: agent restarted",
    { timeout: 15_000 },
    async (t) => {
      const journal = new JobJournal(await tempDir(t));
      // The leader and a child, both ignoring SIGTERM: only SIGKILL ends them.
      const { pid, childPid } = await spawnGroup(t, `trap "" TERM; sleep 300 & echo $!; sleep 300; :`);
      assert.ok(groupHasLiveMembers(pid) && isRunning(childPid));
      const startedAt = "2024-05-01T11:59:00.000Z";
      await journal.record(
        entry("job-orphan", { attempt: 3, pid, pgid: pid, processStartTime: await processStartTime(pid), startedAt }),
      );

      const recovery = await recoverOrphans(journal, now);
      assert.deepEqual(recovery.killed, [{ jobId: "job-orphan", attempt: 3, jobPid: pid }]);
      assert.deepEqual(recovery.results, [
        {
          jobId: "job-orphan",
          attempt: 3,
          outcome: "failed",
          exitCode: null,
          signal: null,
          reason: "agent restarted",
          startedAt,
          finishedAt: now.toISOString(),
        },
      ]);
      assert.equal(groupHasLiveMembers(pid), false, "the whole group is gone when recoverOrphans returns");
      assert.equal(isRunning(childPid), false);
      assert.equal((await journal.list()).entries.length, 1, "the entry stays until the daemon has stored the result");
    },
  );

  test(
    "kills the processes of a job whose entry names no pid yet (a crash between the spawn and its record), found by the job's marks, and no other job's",
    { timeout: 15_000, skip: !onLinux && "reads /proc/<pid>/environ" },
    async (t) => {
      const journal = new JobJournal(await tempDir(t));
      const job = await spawnGroup(
        t,
        `sleep 300 & echo $!; sleep 300`,
        jobMarks({ jobId: "job-unrecorded", attempt: 2 }),
      );
      const earlierAttempt = await spawnGroup(
        t,
        `sleep 300 & echo $!; sleep 300`,
        jobMarks({ jobId: "job-unrecorded", attempt: 1 }),
      );
      await journal.record(entry("job-unrecorded", { attempt: 2 }));

      const recovery = await recoverOrphans(journal, now);
      const killed = recovery.killed.map((k) => k.jobPid);
      assert.ok(killed.includes(job.pid) && killed.includes(job.childPid), `killed ${killed.join(", ")}`);
      assert.ok(!killed.includes(earlierAttempt.pid) && !killed.includes(earlierAttempt.childPid));
      assert.equal(recovery.results[0]?.reason, "agent restarted");
      const deadline = Date.now() + 10_000;
      while (groupHasLiveMembers(job.pid) && Date.now() < deadline) await new Promise((r) => setImmediate(r));
      assert.equal(groupHasLiveMembers(job.pid), false, "the marked job's processes are gone");
      assert.ok(
        isRunning(earlierAttempt.pid) && isRunning(earlierAttempt.childPid),
        "another attempt's processes are left alone",
      );
    },
  );

  test(
    "reports jobs whose process is already gone, and never kills a process that reused the pid",
    { timeout: 15_000 },
    async (t) => {
      const journal = new JobJournal(await tempDir(t));
      // A job that never got a pid (the daemon died between journalling and spawning).
      await journal.record(entry("job-unstarted"));
      // A job whose process has exited.
      const exited = spawn("true", [], { detached: true, stdio: "ignore" });
      await once(exited, "exit");
      await journal.record(
        entry("job-exited", { pid: exited.pid as number, pgid: exited.pid as number, processStartTime: "1" }),
      );
      // An unrelated live process group that now has the recorded pid: the start time gives it away.
      const { pid: unrelated } = await spawnGroup(t, "echo ready; exec sleep 300");
      const realStartTime = await processStartTime(unrelated);
      assert.notEqual(realStartTime, null);
      await journal.record(
        entry("job-reused", { pid: unrelated, pgid: unrelated, processStartTime: `${realStartTime}0` }),
      );

      const recovery = await recoverOrphans(journal, now);
      assert.deepEqual(recovery.killed, []);
      assert.deepEqual(recovery.results.map((r) => [r.jobId, r.outcome, r.reason]).sort(), [
        ["job-exited", "failed", "agent restarted"],
        ["job-reused", "failed", "agent restarted"],
        ["job-unstarted", "failed", "agent restarted"],
      ]);
      assert.equal(isRunning(unrelated), true, "the unrelated process is left alone");
      assert.equal((await journal.list()).entries.length, 3);
    },
  );

  test("passes on damaged journal files for the caller to log", { timeout: 30_000 }, async (t) => {
    const dir = await tempDir(t);
    await fs.writeFile(path.join(dir, "torn.1.json"), "{");
    const recovery = await recoverOrphans(new JobJournal(dir), now);
    assert.deepEqual(recovery.results, []);
    assert.equal(recovery.setAside.length, 1);
  });
});
