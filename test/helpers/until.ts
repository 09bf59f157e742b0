// Waiting for a state that only a probe can see (a row in the database, a file in a
// directory): the probe is asked again every 50 ms until it answers, up to a deadline.

/** Resolves with the probe's first answer other than undefined; rejects, naming what, at the deadline. */
export async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
