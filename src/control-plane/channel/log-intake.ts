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

/** How many (job attempt, code) pairs a connection remembers having answered before it forgets them all. */
const TOLD_MEMORY = 1024;

/**
 * Stores the chunk; returns the `error` frame to answer with, or undefined when there is
 * nothing to say. `told` is the connection's memory of what it already answered: a job past
 * its cap goes on printing, and one `error` per job attempt and code is enough (the runner
 * logs each one it gets, and must not get one per chunk).
 */
export async function appendLog(
  store: JobStoreContract,
  logger: Logger,
  runnerId: string,
  chunk: LogMessage,
  limits: LogLimits,
  told: Set<string>,
): Promise<ErrorMessage | undefined> {
  const outcome = await store.insertLog(chunk, runnerId, chunk, limits);
  if (outcome === "stored") return undefined;
  if (outcome === "repeat" || outcome === "not_held") {
    logger.debug(
      { runnerId, jobId: chunk.jobId, attempt: chunk.attempt, seq: chunk.seq, outcome },
      "log chunk dropped (repeat or stale attempt)",
    );
    return undefined;
  }
  const code = LOG_ERROR_CODES[outcome];
  const key = `${chunk.jobId}\n${chunk.attempt}\n${code}`;
  if (told.has(key)) return undefined;
  if (told.size >= TOLD_MEMORY) told.clear();
  told.add(key);
  const message = `job ${chunk.jobId} attempt ${chunk.attempt} seq ${chunk.seq}: ${explain(outcome, limits)}`;
  logger.warn({ runnerId, code, detail: message }, "log chunk refused");
  return { type: "error", code, message };
}

function explain(outcome: keyof typeof LOG_ERROR_CODES, limits: LogLimits): string {
  switch (outcome) {
    case "finished":
      return "the attempt's result was applied; log chunk dropped (and any later one, without another error)";
    case "seq_out_of_range":
      return `seq must be below ${limits.maxChunks} (the log chunks a job attempt may store); chunk dropped (and any later one out of range, without another error)`;
    case "limit_reached":
      return `the attempt's log would pass ${limits.maxBytes} bytes; chunk dropped (and any later one over it, without another error)`;
  }
}
