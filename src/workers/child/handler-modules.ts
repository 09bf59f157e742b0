// Module handlers inside a worker: each module is imported once per worker (that is what warm
// reuse buys) and called once per job. A module exports its handler as `default` (or as
// `handler`) and may export `close()`, which runs when its worker is retired.
import { pathToFileURL } from "node:url";
import { RunnerError } from "../../errors.js";

export interface HandlerContext {
  jobId: string;
  attempt: number;
  /** Aborted when the job is cancelled or times out; the reason is the abort's `reason`. */
  signal: AbortSignal;
  /**
   * Appends a line to the job's log. Cheap and synchronous. Returns false when the log stream is
   * congested: a handler that logs a lot should then `await drained()`; one that does not has
   * its lines held up to a bound and then dropped (counted in a marker line).
   */
  log(line: string): boolean;
  /** Resolves when the log stream can take more. */
  drained(): Promise<void>;
}

export type Handler = (payload: unknown, context: HandlerContext) => unknown;

interface HandlerModule {
  handler: Handler;
  close: (() => unknown) | null;
}

const modules = new Map<string, Promise<HandlerModule>>();

export function loadHandler(absolutePath: string): Promise<Handler> {
  let loading = modules.get(absolutePath);
  if (loading === undefined) {
    loading = importHandlerModule(absolutePath);
    modules.set(absolutePath, loading);
    // A failed import is not cached: the next job tries again (and fails with the same error
    // if the file is still broken; Node caches the module's evaluation error itself).
    loading.catch(() => modules.delete(absolutePath));
  }
  return loading.then((m) => m.handler);
}

async function importHandlerModule(absolutePath: string): Promise<HandlerModule> {
  const exported = (await import(pathToFileURL(absolutePath).href)) as Record<string, unknown>;
  const handler = typeof exported.default === "function" ? exported.default : exported.handler;
  if (typeof handler !== "function")
    throw new RunnerError("config_invalid", `${absolutePath} exports no handler function (as default or as "handler")`);
  const close = typeof exported.close === "function" ? (exported.close as () => unknown) : null;
  return { handler: handler as Handler, close };
}

/** Runs every loaded module's close(), together, for at most `timeoutMs`. Errors are reported, not thrown. */
export async function closeHandlers(timeoutMs: number): Promise<string[]> {
  const problems: string[] = [];
  const closing = [...modules.entries()].map(async ([path, loading]) => {
    try {
      const loaded = await loading;
      await loaded.close?.();
    } catch (error) {
      problems.push(`${path}: ${error instanceof Error ? error.message : String(error)}`);
    }
  });
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      problems.push(`cleanup did not finish within ${timeoutMs} ms`);
      resolve();
    }, timeoutMs);
  });
  await Promise.race([Promise.all(closing), timedOut]);
  clearTimeout(timer);
  return problems;
}
