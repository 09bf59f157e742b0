// The `module` job kind, inside a worker: call the handler with the payload, a log function and
// an AbortSignal. A resolved promise is success; a rejection is a failure with its message as
// the reason. Once the daemon has asked the job to stop, the outcome is that stop whatever the
// handler then does. A handler that ignores the signal is the daemon's problem: it kills the
// whole worker after the grace period, from outside.
import type { Assignment, JobResult, Outcome } from "../../protocol/channel.js";
import { RunnerError } from "../../errors.js";
import { createLogChunker } from "../../jobs/log-chunks.js";
import { loadHandler } from "./handler-modules.js";
import type { StopOutcome } from "../worker-messages.js";
import type { WorkerOutput } from "./worker-output.js";

/** Lines are batched into chunks of about this size before they cross the IPC channel. */
const BATCH_CHARS = 16 * 1024;
const MAX_REASON_CHARS = 4000;

export interface ModuleJobRun {
  stop(outcome: StopOutcome, reason: string): void;
  done: Promise<JobResult>;
}

export function runModuleJob(
  assignment: Assignment,
  handlerPath: string,
  output: WorkerOutput,
  startedAt: string,
): ModuleJobRun {
  const controller = new AbortController();
  let stopRequest: { outcome: StopOutcome; reason: string } | null = null;
  const log = createBatchedLog(output);
  const payload = assignment.job.kind === "module" ? assignment.job.payload : undefined;

  const run = async (): Promise<JobResult> => {
    let outcome: Outcome = "succeeded";
    let reason: string | null = null;
    try {
      const handler = await loadHandler(handlerPath).catch((error: unknown) => {
        throw new RunnerError(
          "config_invalid",
          `cannot load the handler module ${handlerPath}: ${describeError(error)}`,
          {
            cause: error,
          },
        );
      });
      await handler(payload, {
        jobId: assignment.jobId,
        attempt: assignment.attempt,
        signal: controller.signal,
        log: log.write,
        drained: () => output.whenFlowing(),
      });
    } catch (error) {
      outcome = "failed";
      reason = describeError(error).slice(0, MAX_REASON_CHARS);
    }
    log.close();
    if (stopRequest !== null) ({ outcome, reason } = stopRequest);
    return {
      jobId: assignment.jobId,
      attempt: assignment.attempt,
      outcome,
      exitCode: null,
      signal: null,
      reason,
      startedAt,
      finishedAt: new Date().toISOString(),
    };
  };

  return {
    stop(outcome, reason) {
      if (stopRequest !== null) return;
      stopRequest = { outcome, reason };
      // Not thrown by the runner: handed to the handler as its signal's reason, a plain Error whose
      // message is the reason (the handler API a module author codes against).
      controller.abort(new Error(reason));
    },
    done: run(),
  };
}

/** log(line): batched per tick into chunks (one IPC message per batch, not per line). */
function createBatchedLog(output: WorkerOutput) {
  const chunker = createLogChunker("stdout", (chunk) => output.push(chunk, true));
  let batch = "";
  let scheduled: NodeJS.Immediate | null = null;
  let closed = false;
  const flush = () => {
    if (scheduled !== null) clearImmediate(scheduled);
    scheduled = null;
    if (batch.length === 0) return;
    chunker.write(Buffer.from(batch, "utf8"));
    batch = "";
  };
  return {
    write(line: string): boolean {
      if (closed) return true; // a stray call after the job ended goes nowhere
      batch += `${String(line)}\n`;
      if (batch.length >= BATCH_CHARS) flush();
      else scheduled ??= setImmediate(flush);
      return !output.congested;
    },
    close() {
      flush();
      chunker.end();
      closed = true;
    },
  };
}

function describeError(error: unknown): string {
  if (error instanceof Error) return error.message || error.name;
  return String(error);
}
