// The group commit of runners' reports (src/control-plane/queue/statement-batcher.ts), driven
// with a statement the test resolves by hand: no database, no timers.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { StatementBatcher } from "../../src/control-plane/queue/statement-batcher.js";

interface Item {
  job: string;
  n: number;
}

/** A batcher whose statements wait until the test releases them; each returns the rows of items with an even n. */
function harness(maxBatch = 10) {
  const statements: { items: Item[]; release(): void; fail(error: Error): void }[] = [];
  const batcher = new StatementBatcher<Item, Item>(
    (item) => item.job,
    (row) => row.job,
    (items) =>
      new Promise<Item[]>((resolve, reject) => {
        statements.push({
          items,
          release: () => resolve(items.filter((item) => item.n % 2 === 0)),
          fail: reject,
        });
      }),
    maxBatch,
  );
  return { batcher, statements };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe("statement batcher", () => {
  test(
    "the first call goes at once, and calls made while it runs go together as one statement",
    { timeout: 10_000 },
    async () => {
      const { batcher, statements } = harness();
      const first = batcher.submit({ job: "a", n: 0 });
      assert.equal(statements.length, 1);
      assert.deepEqual(statements[0]!.items, [{ job: "a", n: 0 }]);
      const rest = [batcher.submit({ job: "b", n: 2 }), batcher.submit({ job: "c", n: 3 })];
      assert.equal(statements.length, 1, "nothing more is sent while a statement runs");
      statements[0]!.release();
      assert.deepEqual(await first, { job: "a", n: 0 });
      await tick();
      assert.equal(statements.length, 2);
      assert.deepEqual(
        statements[1]!.items.map((item) => item.job),
        ["b", "c"],
      );
      statements[1]!.release();
      assert.deepEqual(await Promise.all(rest), [{ job: "b", n: 2 }, undefined], "each learns of its own row");
    },
  );

  test(
    "a job named twice waits for the next statement, in order, and a full batch overflows to the next",
    { timeout: 10_000 },
    async () => {
      const { batcher, statements } = harness(2);
      const first = batcher.submit({ job: "x", n: 1 });
      const again = [
        batcher.submit({ job: "a", n: 2 }),
        batcher.submit({ job: "a", n: 4 }),
        batcher.submit({ job: "b", n: 6 }),
        batcher.submit({ job: "c", n: 8 }),
      ];
      statements[0]!.release();
      assert.equal(await first, undefined);
      await tick();
      assert.deepEqual(statements[1]!.items, [
        { job: "a", n: 2 },
        { job: "b", n: 6 },
      ]);
      statements[1]!.release();
      await tick();
      assert.deepEqual(statements[2]!.items, [
        { job: "a", n: 4 },
        { job: "c", n: 8 },
      ]);
      statements[2]!.release();
      assert.deepEqual(await Promise.all(again), [
        { job: "a", n: 2 },
        { job: "a", n: 4 },
        { job: "b", n: 6 },
        { job: "c", n: 8 },
      ]);
    },
  );

  test(
    "a statement that fails rejects the calls in it, and the next batch still goes",
    { timeout: 10_000 },
    async () => {
      const { batcher, statements } = harness();
      const first = batcher.submit({ job: "a", n: 0 });
      const second = batcher.submit({ job: "b", n: 0 });
      statements[0]!.fail(new Error("connection lost"));
      await assert.rejects(first, /connection lost/);
      await tick();
      statements[1]!.release();
      assert.deepEqual(await second, { job: "b", n: 0 });
    },
  );
});
