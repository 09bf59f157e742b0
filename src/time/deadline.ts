// The one time model of the sans-IO cores (the channel machine, the device sync): time comes
// in as an input, a `now` in ms from one clock, and each core says when it next wants to be
// woken with `nextDeadline(state)`. A driver arms one `DeadlineTimer` with it after every
// step and, when it fires, feeds the core the named timer input. The cores hold their
// deadlines in their state, so a deadline exists exactly while the state that needs it does.

/** Milliseconds, from the one clock both cores and their drivers read. */
export type Clock = () => number;

/**
 * Whole epoch milliseconds that only move forward: the wall-clock time at the process start
 * plus the monotonic time since. The device sync persists its times and compares them after a
 * restart (so they are epoch-based), and a deadline must not move when the system clock is
 * set back or forward while it waits (a drain deadline an hour late would be a hung stop).
 */
export const systemClock: Clock = () => Math.floor(performance.timeOrigin + performance.now());

/** A core's next wake-up: which of its timers, and when (a time of the core's clock). */
export interface Deadline<Timer extends string> {
  timer: Timer;
  at: number;
}

/** The earliest deadline; on a tie, the one listed first (cores list theirs by priority). */
export function earliest<Timer extends string>(deadlines: readonly (Deadline<Timer> | null)[]): Deadline<Timer> | null {
  let first: Deadline<Timer> | null = null;
  for (const deadline of deadlines) if (deadline && (first === null || deadline.at < first.at)) first = deadline;
  return first;
}

/**
 * The driver's half: at most one armed timeout, for the deadline a core last reported. Arming
 * the deadline already armed keeps the timeout (a step per log chunk must not churn timers).
 * A deadline the core still holds after its timer fired is armed again: a timeout may fire a
 * little before the clock reads the deadline, and the core then waits for it to pass.
 */
export class DeadlineTimer<Timer extends string> {
  private armed: { deadline: Deadline<Timer>; handle: NodeJS.Timeout } | null = null;

  constructor(
    private readonly clock: Clock,
    private readonly fire: (deadline: Deadline<Timer>) => void,
    /** Unreferenced: the timer alone does not keep the process up. */
    private readonly unref = false,
  ) {}

  arm(deadline: Deadline<Timer> | null): void {
    const armed = this.armed?.deadline;
    if (deadline && armed && deadline.timer === armed.timer && deadline.at === armed.at) return;
    this.cancel();
    if (!deadline) return;
    const handle = setTimeout(
      () => {
        this.armed = null;
        this.fire(deadline);
      },
      Math.max(0, deadline.at - this.clock()),
    );
    if (this.unref) handle.unref();
    this.armed = { deadline, handle };
  }

  cancel(): void {
    if (this.armed) clearTimeout(this.armed.handle);
    this.armed = null;
  }
}
