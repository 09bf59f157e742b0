// The worker process: forked by the daemon's pool with an IPC channel, it runs one job at a
// time for as long as the pool keeps it. Module jobs run in this process (their modules stay
// imported: the point of a warm worker); command jobs are spawned from here in their own
// process group, so the daemon itself never forks per job. With every result it reports its
// own RSS and open fds, which the pool's recycle decision uses.
//
// It exits when the pool retires it (after the handlers' cleanup), when the IPC channel closes
// (the daemon is gone: the running job is stopped at once, so nothing is left orphaned), or on
// an uncaught exception (reported first, so the job's reason says what happened).
import type { JobResult } from "../../protocol/channel.js";
import { RunnerError } from "../../errors.js";
import { startCommandJob, type RunningCommandJob } from "../../jobs/command.js";
import { writeJobProcessRecord } from "../../jobs/process-record.js";
import { processStartTimeSync } from "../../state/process-start.js";
import { closeHandlers } from "./handler-modules.js";
import { runModuleJob, type ModuleJobRun } from "./module-job.js";
import { readOwnHealth } from "./own-health.js";
import type { FromWorker, ToWorker } from "../worker-messages.js";
import { WorkerOutput } from "./worker-output.js";

const CLEANUP_TIMEOUT_MS = 5_000;
const EXIT_ON_FATAL_CODE = 70;

type Current =
  { jobId: string; kind: "command"; job: RunningCommandJob } | { jobId: string; kind: "module"; job: ModuleJobRun };

let current: Current | null = null;
let exiting = false;

function send(message: FromWorker, onWritten: () => void = () => undefined): boolean {
  // No channel (the daemon is gone, or this was not forked with one): nothing to wait for.
  if (!process.connected || process.send === undefined) {
    onWritten();
    return true;
  }
  return process.send(message, undefined, {}, () => onWritten());
}

const output = new WorkerOutput(send);

function handle(message: ToWorker): void {
  switch (message.type) {
    case "run":
      output.setPaused(message.outputPaused);
      try {
        startJob(message);
      } catch (error) {
        // No job input may take the worker down: the job fails, saying why, and the worker stays.
        if (current === null) failUnstarted(message.assignment, error);
        else throw error;
      }
      return;
    case "stop":
      if (current === null || current.jobId !== message.jobId) return;
      if (current.kind === "command") current.job.cancel(message.reason, message.graceMs);
      else current.job.stop(message.outcome, message.reason);
      return;
    case "flow":
      output.setPaused(message.paused);
      return;
    case "retire":
      void exitAfterCleanup();
      return;
  }
}

function startJob(message: Extract<ToWorker, { type: "run" }>): void {
  const { assignment } = message;
  // The pool sends one job at a time: a second one is a bug on the daemon's side, fatal here.
  if (current !== null)
    throw new RunnerError("internal", `asked to run ${assignment.jobId} while ${current.jobId} runs`);
  const jobId = assignment.jobId;
  let done: Promise<JobResult>;
  if (assignment.job.kind === "module") {
    const startedAt = new Date().toISOString();
    send({ type: "started", jobId, pid: process.pid, startedAt });
    const job = runModuleJob(assignment, message.handlerPath ?? "", output, startedAt);
    current = { jobId, kind: "module", job };
    done = job.done;
  } else {
    let recordFailure: string | null = null;
    const job = startCommandJob(assignment, {
      onStarted: ({ pid, startedAt }) => {
        // Durable before it is reported: see process-record.ts.
        recordFailure = recordProcess(message.journalFile, {
          jobId,
          attempt: assignment.attempt,
          pid,
          pgid: pid,
          processStartTime: processStartTimeSync(pid),
          startedAt,
        });
        send({ type: "started", jobId, pid, startedAt });
      },
      onLog: (chunk) => output.push(chunk, false),
    });
    current = { jobId, kind: "command", job };
    // A process no crash recovery could find must not run: stop it at once, saying why.
    if (recordFailure !== null)
      job.cancel(`the runner could not record the job's process for crash recovery: ${recordFailure}`, 0);
    // Congested output stops the reading of the job's pipes; the job's own writes then block.
    const unsubscribe = output.onCongestion((congested) => (congested ? job.pauseOutput() : job.resumeOutput()));
    if (output.congested) job.pauseOutput();
    done = job.done.finally(unsubscribe);
  }
  void done.then((result) => {
    current = null;
    output.flushAll();
    send({ type: "result", result, health: readOwnHealth() });
  });
}

function failUnstarted(assignment: Extract<ToWorker, { type: "run" }>["assignment"], error: unknown): void {
  const reason = `the worker could not start the job: ${error instanceof Error ? error.message : String(error)}`.slice(
    0,
    1000,
  );
  const result: JobResult = {
    jobId: assignment.jobId,
    attempt: assignment.attempt,
    outcome: "failed",
    exitCode: null,
    signal: null,
    reason,
    startedAt: null,
    finishedAt: new Date().toISOString(),
  };
  send({ type: "result", result, health: readOwnHealth() });
}

/** Writes the job's process record; returns why it failed, or null. */
function recordProcess(file: string | null, record: Parameters<typeof writeJobProcessRecord>[1]): string | null {
  if (file === null) return null;
  try {
    writeJobProcessRecord(file, record);
    return null;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

async function exitAfterCleanup(): Promise<void> {
  if (exiting) return;
  exiting = true;
  const problems = await closeHandlers(CLEANUP_TIMEOUT_MS);
  for (const problem of problems) process.stderr.write(`handler cleanup: ${problem}\n`);
  process.exit(0);
}

/** The daemon is gone: stop the job now (its result has nowhere to go) and leave. */
async function exitOnDisconnect(): Promise<void> {
  if (exiting) return;
  exiting = true;
  const running = current;
  if (running !== null) {
    if (running.kind === "command") running.job.cancel("the runner's daemon went away", 0);
    else running.job.stop("cancelled", "the runner's daemon went away");
    await Promise.race([running.job.done, new Promise((resolve) => setTimeout(resolve, CLEANUP_TIMEOUT_MS))]);
  }
  await closeHandlers(CLEANUP_TIMEOUT_MS);
  process.exit(0);
}

function reportFatal(error: unknown, origin: string): void {
  const what = error instanceof Error ? (error.stack ?? error.message) : String(error);
  process.stderr.write(`worker ${process.pid}: ${origin}: ${what}\n`);
  const message = `${origin === "unhandledRejection" ? "unhandled rejection" : "uncaught exception"}: ${error instanceof Error ? error.message : String(error)}`;
  // The command job's group must not outlive us: it would run on unsupervised.
  if (current?.kind === "command") current.job.cancel("its worker crashed", 0);
  const exit = () => process.exit(EXIT_ON_FATAL_CODE);
  setTimeout(exit, 1_000).unref();
  send({ type: "fatal", message: message.slice(0, 2000) }, exit);
}

process.title = "runner-worker";
process.on("message", (message: ToWorker) => handle(message));
process.on("disconnect", () => void exitOnDisconnect());
process.on("uncaughtException", reportFatal);
send({ type: "ready", health: readOwnHealth() });
