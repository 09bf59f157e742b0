// Cleanups that run last-registered-first and all run, like a stack of `finally` blocks.
// node:test runs a test's `t.after` hooks first-registered-first and skips the rest once one
// throws: a temp dir registered before the daemon writing into it was removed while the
// daemon still wrote (ENOTEMPTY), and the daemon's own stop, skipped, kept the test file's
// process alive for ever. Every fixture registers its cleanup here instead.
import type { TestContext } from "node:test";

type Cleanup = () => unknown;

const stacks = new WeakMap<TestContext, Cleanup[]>();

/** Runs `fn` when `t` ends, before every cleanup registered earlier; a failing one does not stop the others. */
export function onCleanup(t: TestContext, fn: Cleanup): void {
  let stack = stacks.get(t);
  if (!stack) {
    const fns: Cleanup[] = [];
    stack = fns;
    stacks.set(t, fns);
    t.after(async () => {
      const errors: unknown[] = [];
      while (fns.length > 0) {
        try {
          await fns.pop()!();
        } catch (error) {
          errors.push(error);
        }
      }
      if (errors.length === 1) throw errors[0];
      if (errors.length > 1) throw new AggregateError(errors, `${errors.length} cleanups failed`);
    });
  }
  stack.push(fn);
}
