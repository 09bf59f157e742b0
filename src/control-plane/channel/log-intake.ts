// The control plane's end of a `log` frame: the chunk is stored within the job attempt's
// limits (store/job-store.ts insertLog), and a chunk refused for a reason the runner can act
// on is answered with an `error` frame whose code says which limit (PROTOCOL.md, "Limits").
// A repeat or a stale attempt's chunk is dropped quietly: that is the protocol working
// (re-sends after a reconnect, fencing), not a runner misbehaving.
import type { ControlMessage, RunnerMessage } from "../../protocol/channel.js";
import type { Logger } from "../../log/logger.js";
import type { JobStoreContract, LogInsertOutcome, LogLimits } from "../store/contract.js";

type LogMessage = Extract<RunnerMessage, { type: "log" }>;
type ErrorMessage = Extract<ControlMessage, { type: "error" }>;

/** The error codes of refused log chunks, as PROTOCOL.md lists them. */
export const LOG_ERROR_CODES = {
  finished: "log_after_result",
  seq_out_of_range: "log_seq_out_of_range",
  limit_reached: "log_limit_exceeded",
} as const satisfies Partial<Record<LogInsertOutcome, string>>;

/** Stores the chunk; returns the `error` frame to answer with, or undefined when there is nothing to say. */
export async function appendLog(
  store: JobStoreContract,
  logger: Logger,
  runnerId: string,
  chunk: LogMessage,
  limits: LogLimits,
): Promise<ErrorMessage | undefined> {
  const outcome = await store.insertLog(chunk, runnerId, chunk, limits);
  const where = `job ${chunk.jobId} attempt ${chunk.attempt} seq ${chunk.seq}`;
  switch (outcome) {
    case "stored":
      return undefined;
    case "repeat":
    case "not_held":
      logger.debug(
        { runnerId, jobId: chunk.jobId, attempt: chunk.attempt, seq: chunk.seq, outcome },
        "log chunk dropped (repeat or stale attempt)",
      );
      return undefined;
    case "finished":
      return refuse(
        logger,
        runnerId,
        LOG_ERROR_CODES.finished,
        `${where}: the attempt's result was applied; log chunk dropped`,
      );
    case "seq_out_of_range":
      return refuse(
        logger,
        runnerId,
        LOG_ERROR_CODES.seq_out_of_range,
        `${where}: seq must be below ${limits.maxChunks} (the log chunks a job attempt may store); chunk dropped`,
      );
    case "limit_reached":
      return refuse(
        logger,
        runnerId,
        LOG_ERROR_CODES.limit_reached,
        `${where}: the attempt's log would pass ${limits.maxBytes} bytes; chunk dropped`,
      );
  }
}

function refuse(logger: Logger, runnerId: string, code: string, message: string): ErrorMessage {
  logger.warn({ runnerId, code, detail: message }, "log chunk refused");
  return { type: "error", code, message };
}
