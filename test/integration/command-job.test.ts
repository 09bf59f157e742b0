// The `command` job kind against real processes: outcomes, spawn failures, the environment a
// job sees, timeouts and cancels, and the promise that no process of a job outlives `done`.
import { test, describe, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { promises as fs, readdirSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { startCommandJob, type CommandJobOptions, type RunningJob } from "../../src/jobs/command.js";
import { jobWorkDir, prepareWorkRoot } from "../../src/jobs/work-dir.js";
import { MAX_LOG_CHUNK_BYTES, createLogChunker, type LogChunk } from "../../src/jobs/log-chunks.js";
import type { Assignment } from "../../src/protocol/channel.js";
import { isRunning } from "../helpers/processes.js";
import { onCleanup } from "../helpers/cleanup.js";

const node = process.execPath;
const onLinux = process.platform === "linux";
const posixOnly = process.platform === "win32" ? "needs POSIX process groups and sh" : false;

// Not from ../helpers/fixtures.js: that pulls in the control plane, which this file does not need.
async function tempDir(t: TestContext): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "runner-command-job-"));
  onCleanup(t, () => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

let nextId = 0;
function assignment(
  argv: string[],
  overrides: {
    env?: Record<string, string>;
    cwd?: string;
    keepWorkDir?: boolean;
    timeoutMs?: number;
    cancelGraceMs?: number;
  } = {},
): Assignment {
  return {
    type: "assign",
    jobId: `job-${process.pid}-${nextId++}`,
    attempt: 1,
    job: { kind: "command", argv, env: overrides.env ?? {}, cwd: overrides.cwd, keepWorkDir: overrides.keepWorkDir },
    timeoutMs: overrides.timeoutMs ?? 30_000,
    cancelGraceMs: overrides.cancelGraceMs ?? 10_000,
    leaseExpiresAt: new Date(Date.now() + 60_000).toISOString(),
  };
}

interface Observed {
  job: RunningJob;
  logs: LogChunk[];
  started: { pid: number; startedAt: string }[];
  /** Index in `logs` at the moment onStarted ran (must be 0). */
  logsBeforeStart: number[];
  text(stream: "stdout" | "stderr"): string;
  /** Resolves once `stdout` contains the text. */
  waitForOutput(needle: string): Promise<void>;
}

/** Starts a job, records every hook call, and SIGKILLs whatever is left if the test fails. */
function run(t: TestContext, a: Assignment, options: CommandJobOptions = {}): Observed {
  const logs: LogChunk[] = [];
  const started: Observed["started"] = [];
  const logsBeforeStart: number[] = [];
  const waiters: { needle: string; resolve: () => void }[] = [];
  const text = (stream: "stdout" | "stderr") =>
    logs
      .filter((l) => l.stream === stream)
      .map((l) => l.data)
      .join("");
  const job = startCommandJob(
    a,
    {
      onStarted: (info) => {
        started.push(info);
        logsBeforeStart.push(logs.length);
      },
      onLog: (chunk) => {
        logs.push(chunk);
        for (const w of waiters) if (text("stdout").includes(w.needle)) w.resolve();
      },
    },
    options,
  );
  onCleanup(t, () => {
    if (job.pid !== null) killQuietly(-job.pid);
  });
  const waitForOutput = (needle: string) =>
    new Promise<void>((resolve) => {
      if (text("stdout").includes(needle)) resolve();
      else waiters.push({ needle, resolve });
    });
  return { job, logs, started, logsBeforeStart, text, waitForOutput };
}

function killQuietly(target: number): void {
  try {
    process.kill(target, "SIGKILL");
  } catch {
    // already gone
  }
}

/** Linux: the pids of the group's members that are not zombies (read independently of the code under test). */
function liveMembersOf(pgid: number): number[] {
  const members: number[] = [];
  for (const entry of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const [state, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(pgrp) === pgid && state !== "Z") members.push(Number(entry));
    } catch {
      // gone while we looked
    }
  }
  return members;
}

const nodeScript = (source: string) => [node, "-e", source];

/** Resolves once `file` is gone (the removal runs after the result), or fails after `ms`. */
async function waitGone(file: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (
    await fs.access(file).then(
      () => true,
      () => false,
    )
  ) {
    if (Date.now() > deadline) assert.fail(`${file} is still there after ${ms} ms`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe("a command job's own directory", { skip: posixOnly }, () => {
  test(
    "a job without a cwd runs in a fresh directory of its own, which is removed once its result is in",
    { timeout: 30_000 },
    async (t) => {
      const root = await tempDir(t);
      const a = assignment(["sh", "-c", "pwd; ls -A | wc -l; echo x > made-here"]);
      const dir = jobWorkDir(root, a);
      const o = run(t, a, { workDir: dir });
      const result = await o.job.done;
      assert.equal(result.outcome, "succeeded", result.reason ?? undefined);
      assert.deepEqual(
        o
          .text("stdout")
          .split("\n")
          .map((line) => line.trim())
          .slice(0, 2),
        [dir, "0"],
        "fresh and empty",
      );
      await waitGone(dir, 10_000);
    },
  );

  test("keepWorkDir keeps the directory and what the job made there", { timeout: 30_000 }, async (t) => {
    const root = await tempDir(t);
    const a = assignment(["sh", "-c", "echo kept > made-here"], { keepWorkDir: true });
    const dir = jobWorkDir(root, a);
    assert.equal((await run(t, a, { workDir: dir }).job.done).outcome, "succeeded");
    assert.equal(await fs.readFile(path.join(dir, "made-here"), "utf8"), "kept\n");
    assert.equal((await fs.stat(dir)).mode & 0o777, 0o700);
  });

  test("a job that names its cwd runs there, and no directory is made for it", { timeout: 30_000 }, async (t) => {
    const root = await tempDir(t);
    const cwd = await tempDir(t);
    const a = assignment(["pwd"], { cwd });
    const o = run(t, a, { workDir: jobWorkDir(root, a) });
    assert.equal((await o.job.done).outcome, "succeeded");
    assert.equal(o.text("stdout").trim(), await fs.realpath(cwd));
    assert.deepEqual(await fs.readdir(root), []);
  });

  test(
    "at start the work dir is created, and what killed runs left in it is removed",
    { timeout: 30_000 },
    async (t) => {
      const root = path.join(await tempDir(t), "work");
      assert.deepEqual(await prepareWorkRoot(root), []);
      assert.equal((await fs.stat(root)).mode & 0o777, 0o700);
      await fs.mkdir(path.join(root, "job_a-1", "deep"), { recursive: true });
      await fs.writeFile(path.join(root, "job_a-1", "deep", "f"), "x");
      assert.deepEqual(await prepareWorkRoot(root), ["job_a-1"]);
      assert.deepEqual(await fs.readdir(root), []);
    },
  );
});

describe("command job outcomes", () => {
  test(
    "a job that exits 0 succeeds, with its stdout and stderr delivered in order after onStarted",
    { timeout: 10_000 },
    async (t) => {
      const script = `
      const pause = (ms) => new Promise((r) => setTimeout(r, ms));
      (async () => {
        process.stdout.write("out-1\\n"); await pause(150);
        process.stderr.write("err-1\\n"); await pause(150);
        process.stdout.write("out-2\\n");
      })();`;
      const observed = run(t, assignment(nodeScript(script)));
      const result = await observed.job.done;
      assert.equal(result.outcome, "succeeded");
      assert.equal(result.exitCode, 0);
      assert.equal(result.signal, null);
      assert.equal(result.reason, null);
      assert.deepEqual(
        observed.started.map((s) => s.pid),
        [observed.job.pid],
      );
      assert.deepEqual(observed.logsBeforeStart, [0]);
      assert.equal(result.startedAt, observed.started[0]?.startedAt);
      assert.ok(Date.parse(result.finishedAt) >= Date.parse(result.startedAt ?? ""));
      assert.deepEqual(
        observed.logs.map((l) => [l.stream, l.data]),
        [
          ["stdout", "out-1\n"],
          ["stderr", "err-1\n"],
          ["stdout", "out-2\n"],
        ],
      );
    },
  );

  test("a job that exits 3 fails with its exit code", { timeout: 10_000, skip: posixOnly }, async (t) => {
    const observed = run(t, assignment(["sh", "-c", "echo bye >&2; exit 3"]));
    const result = await observed.job.done;
    assert.deepEqual(
      [result.outcome, result.exitCode, result.signal, result.reason],
      ["failed", 3, null, "exited with code 3"],
    );
    assert.equal(observed.text("stderr"), "bye\n");
  });

  test(
    "a job killed by a signal it sent itself fails with that signal",
    { timeout: 10_000, skip: posixOnly },
    async (t) => {
      const observed = run(t, assignment(["sh", "-c", "ulimit -c 0; kill -SEGV $$"]));
      const result = await observed.job.done;
      assert.deepEqual(
        [result.outcome, result.exitCode, result.signal, result.reason],
        ["failed", null, "SIGSEGV", "killed by SIGSEGV"],
      );
    },
  );
});

describe("command jobs that cannot start", () => {
  const expectNoStart = async (t: TestContext, a: Assignment, reason: string) => {
    const observed = run(t, a);
    assert.equal(observed.job.pid, null);
    const result = await observed.job.done;
    assert.deepEqual(
      [result.outcome, result.reason, result.startedAt, result.exitCode, result.signal],
      ["failed", reason, null, null, null],
    );
    assert.deepEqual(observed.started, [], "onStarted must not be called");
    observed.job.cancel("too late"); // harmless
  };

  test("a program that does not exist fails with ENOENT and the program's name", { timeout: 10_000 }, (t) =>
    expectNoStart(t, assignment(["/no/such/program", "--flag"]), "cannot start: ENOENT: /no/such/program"),
  );

  test("a missing cwd fails naming the cwd, not the program", { timeout: 10_000 }, (t) =>
    expectNoStart(
      t,
      assignment([node, "-e", ""], { cwd: "/no/such/dir" }),
      "cannot start: cwd /no/such/dir does not exist",
    ),
  );

  test("a cwd that is a file fails saying so", { timeout: 10_000, skip: posixOnly }, async (t) => {
    const file = path.join(await tempDir(t), "plain-file");
    await fs.writeFile(file, "");
    await expectNoStart(t, assignment([node, "-e", ""], { cwd: file }), `cannot start: cwd ${file} is not a directory`);
  });

  test("a program that is not executable fails with EACCES", { timeout: 10_000, skip: posixOnly }, async (t) => {
    const file = path.join(await tempDir(t), "not-executable");
    await fs.writeFile(file, "#!/bin/sh\necho hi\n", { mode: 0o600 });
    await expectNoStart(t, assignment([file]), `cannot start: EACCES: ${file}`);
  });
});

describe("the environment a command job sees", () => {
  const printEnv = nodeScript("process.stdout.write(JSON.stringify(process.env))");
  // The base, plus the job's own marks (its reference, which crash recovery finds its processes by).
  const allowed = new Set([
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SystemRoot",
    "ComSpec",
    "PATHEXT",
    "RUNNER_JOB_ID",
    "RUNNER_JOB_ATTEMPT",
  ]);

  test(
    "holds the job's variables and a minimal base, and nothing else from the runner",
    { timeout: 10_000 },
    async (t) => {
      const baseEnv = {
        PATH: "/usr/local/bin:/usr/bin:/bin",
        HOME: "/home/someone",
        LANG: "C.UTF-8",
        RUNNER_SECRET_TEST: "s3cret-from-the-runner",
        RUNNER_CREDENTIAL: "rnc_do-not-leak",
        DBUS_SESSION_BUS_ADDRESS: "unix:path=/run/user/1000/bus",
        AWS_SECRET_ACCESS_KEY: "also-not",
      };
      const observed = run(
        t,
        assignment(printEnv, { env: { JOB_VAR: "from the job", HOME: "/job/home", RUNNER_JOB_ID: "not this job" } }),
        { baseEnv },
      );
      const result = await observed.job.done;
      assert.equal(result.outcome, "succeeded", result.reason ?? "");
      const env = JSON.parse(observed.text("stdout")) as Record<string, string>;
      assert.equal(env.JOB_VAR, "from the job");
      assert.equal(env.PATH, baseEnv.PATH);
      assert.equal(env.LANG, "C.UTF-8");
      assert.equal(env.HOME, "/job/home", "the job's own value wins over the base");
      assert.equal(env.RUNNER_JOB_ID, observed.job.ref.jobId, "the runner's marks win over the job's");
      assert.equal(env.RUNNER_JOB_ATTEMPT, String(observed.job.ref.attempt));
      for (const name of Object.keys(env))
        assert.ok(allowed.has(name) || name === "JOB_VAR", `unexpected variable ${name} in the job's env`);
      assert.ok(!observed.text("stdout").includes("s3cret"));
    },
  );

  test("by default the base is the runner's own env, still filtered", { timeout: 10_000 }, async (t) => {
    process.env.RUNNER_SECRET_TEST = "s3cret-in-process-env";
    onCleanup(t, () => delete process.env.RUNNER_SECRET_TEST);
    const observed = run(t, assignment(printEnv));
    await observed.job.done;
    const env = JSON.parse(observed.text("stdout")) as Record<string, string>;
    assert.equal(env.RUNNER_SECRET_TEST, undefined);
    assert.equal(env.PATH, process.env.PATH);
  });
});

describe("command job timeouts and cancels", { skip: posixOnly }, () => {
  test(
    "a job past its timeout is stopped and reported timed_out within a bounded margin",
    { timeout: 10_000 },
    async (t) => {
      const began = Date.now();
      // The grace is long, so an end well before it shows SIGTERM at the timeout did it (the upper
      // bound leaves a loaded machine room; it only has to be far below the grace).
      const observed = run(t, assignment(["sleep", "30"], { timeoutMs: 300, cancelGraceMs: 30_000 }));
      const result = await observed.job.done;
      const elapsed = Date.now() - began;
      assert.deepEqual(
        [result.outcome, result.reason, result.signal],
        ["timed_out", "timed out after 300 ms", "SIGTERM"],
      );
      assert.ok(elapsed >= 290 && elapsed < 8_000, `took ${elapsed} ms`);
    },
  );

  test("cancelling a job that honours SIGTERM ends it well within the grace period", { timeout: 10_000 }, async (t) => {
    const observed = run(t, assignment(["sleep", "30"], { cancelGraceMs: 30_000 }));
    const began = Date.now();
    observed.job.cancel("cancelled by the operator");
    observed.job.cancel("a second cancel changes nothing");
    const result = await observed.job.done;
    const elapsed = Date.now() - began;
    assert.deepEqual(
      [result.outcome, result.reason, result.signal],
      ["cancelled", "cancelled by the operator", "SIGTERM"],
    );
    assert.ok(elapsed < 8_000, `took ${elapsed} ms: SIGTERM ended it, not the SIGKILL after the 30 s grace`);
    observed.job.cancel("after the end: harmless");
  });

  test(
    "no process survives a cancel, even a child and grandchild that ignore SIGTERM",
    { timeout: 15_000 },
    async (t) => {
      // The outer shell, a subshell and two sleeps, all ignoring SIGTERM (SIG_IGN is inherited
      // at fork, so there is no moment when a child could still be stopped by it).
      const script = `trap "" TERM; (sleep 300; :) & sleep 300 & echo "pids $$ $!"; echo ready; wait`;
      const observed = run(t, assignment(["sh", "-c", script], { cancelGraceMs: 300 }));
      await observed.waitForOutput("ready");
      const pgid = observed.job.pid as number;
      const printed = /pids (\d+) (\d+)/.exec(observed.text("stdout"))?.slice(1).map(Number) ?? [];
      // The subshell forks its sleep on its own schedule: wait (bounded) until all four exist.
      for (const until = Date.now() + 3_000; onLinux && liveMembersOf(pgid).length < 4 && Date.now() < until;) {
        await new Promise((r) => setTimeout(r, 10));
      }
      const tree = onLinux ? liveMembersOf(pgid) : printed;
      assert.ok(tree.length >= (onLinux ? 4 : 2), `expected the whole tree, found ${tree.join(",")}`);
      for (const pid of printed) assert.ok(tree.includes(pid));

      const began = Date.now();
      observed.job.cancel("cancelled by the operator");
      const result = await observed.job.done;
      const elapsed = Date.now() - began;
      assert.equal(result.outcome, "cancelled");
      assert.ok(
        elapsed >= 280,
        `SIGTERM was ignored, so only the SIGKILL after the grace can end it (took ${elapsed} ms)`,
      );
      assert.ok(elapsed < 300 + 1_500, `took ${elapsed} ms`);
      const survivors = tree.filter(isRunning);
      assert.deepEqual(survivors, [], "every process of the job's tree is gone when done resolves");
      if (onLinux) assert.deepEqual(liveMembersOf(pgid), []);
    },
  );

  test(
    "a background grandchild left by a job that exited normally is killed before done resolves",
    { timeout: 10_000 },
    async (t) => {
      // The grandchild keeps stdout open, so the job's output cannot end before it does.
      const observed = run(t, assignment(["sh", "-c", "sleep 300 & echo $!"], { cancelGraceMs: 5_000 }));
      const began = Date.now();
      const result = await observed.job.done;
      assert.deepEqual([result.outcome, result.exitCode], ["succeeded", 0]);
      const grandchild = Number(observed.text("stdout").trim());
      assert.ok(grandchild > 0);
      assert.equal(isRunning(grandchild), false, "the grandchild is gone");
      assert.ok(Date.now() - began < 2_000, "it honoured SIGTERM, so no grace period was needed");
      if (onLinux) assert.deepEqual(liveMembersOf(observed.job.pid as number), []);
    },
  );

  test(
    "a daemonized grandchild that ignores SIGTERM and left the pipes is SIGKILLed after the grace",
    { timeout: 10_000 },
    async (t) => {
      // Ignored before the fork, so the grandchild ignores SIGTERM from its first instant.
      const script = `trap "" TERM; (sleep 300; :) >/dev/null 2>&1 & echo $!`;
      const observed = run(t, assignment(["sh", "-c", script], { cancelGraceMs: 300 }));
      const began = Date.now();
      const result = await observed.job.done;
      const elapsed = Date.now() - began;
      assert.equal(result.outcome, "succeeded");
      const grandchild = Number(observed.text("stdout").trim());
      assert.equal(isRunning(grandchild), false, "the grandchild is gone");
      assert.ok(elapsed >= 280 && elapsed < 2_000, `took ${elapsed} ms`);
      if (onLinux) assert.deepEqual(liveMembersOf(observed.job.pid as number), []);
    },
  );
});

describe("command job output", () => {
  test("20 MB of output arrives in full, in chunks of at most 64 KiB", { timeout: 30_000 }, async (t) => {
    const total = 20 * 1024 * 1024;
    const script = `
      const block = Buffer.alloc(1024 * 1024, 120);
      let written = 0;
      const write = () => {
        while (written < ${total}) {
          written += block.length;
          if (!process.stdout.write(block)) return process.stdout.once("drain", write);
        }
      };
      write();`;
    let bytes = 0;
    let biggest = 0;
    let chunks = 0;
    const job = startCommandJob(assignment(nodeScript(script)), {
      onStarted: () => undefined,
      onLog: ({ data }) => {
        const size = Buffer.byteLength(data);
        bytes += size;
        chunks++;
        biggest = Math.max(biggest, size);
      },
    });
    onCleanup(t, () => job.pid !== null && killQuietly(-job.pid));
    const result = await job.done;
    assert.equal(result.outcome, "succeeded");
    assert.equal(bytes, total);
    assert.ok(biggest <= MAX_LOG_CHUNK_BYTES, `a chunk of ${biggest} bytes`);
    assert.ok(chunks >= total / MAX_LOG_CHUNK_BYTES);
  });

  test("multi-byte characters are never split across chunks", { timeout: 10_000 }, async (t) => {
    // Built by the job itself: an argument this long would exceed the OS's per-argument limit.
    const expected = "€".repeat(100_001) + "é".repeat(50_001) + "😀".repeat(30_001) + "end";
    const script = `process.stdout.write("€".repeat(100_001) + "é".repeat(50_001) + "😀".repeat(30_001) + "end")`;
    const observed = run(t, assignment(nodeScript(script)));
    const result = await observed.job.done;
    assert.equal(result.outcome, "succeeded", result.reason ?? "");
    const text = observed.text("stdout");
    assert.ok(text === expected, `got ${text.length} characters, expected ${expected.length}`);
    for (const chunk of observed.logs) {
      assert.ok(!chunk.data.includes("\uFFFD"));
      assert.ok(Buffer.byteLength(chunk.data) <= MAX_LOG_CHUNK_BYTES);
    }
  });

  test("the chunker holds back a character written one byte at a time", { timeout: 60_000 }, () => {
    const chunks: string[] = [];
    const chunker = createLogChunker("stdout", (c) => chunks.push(c.data), 8);
    for (const byte of Buffer.from("a€😀bcdefghij€")) chunker.write(Buffer.from([byte]));
    chunker.write(Buffer.from("xyz€€€€", "utf8"));
    chunker.write(Buffer.from([0xe2, 0x82])); // the start of a € that never completes
    chunker.end();
    assert.equal(chunks.slice(0, -1).join(""), "a€😀bcdefghij€xyz€€€€");
    assert.equal(chunks.at(-1), "\uFFFD");
    for (const c of chunks) assert.ok(Buffer.byteLength(c) <= 8);
  });
});
