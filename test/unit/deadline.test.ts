// The time model shared by the sans-IO cores: picking the next deadline is pure.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { earliest, type Deadline } from "../../src/time/deadline.js";

describe("the next deadline", () => {
  test("is the earliest of those given, whatever their order", () => {
    const list: Deadline<"a" | "b" | "c">[] = [
      { timer: "a", at: 30 },
      { timer: "b", at: 10 },
      { timer: "c", at: 20 },
    ];
    assert.deepEqual(earliest(list), { timer: "b", at: 10 });
  });

  test("on a tie is the one listed first, so a core lists its deadlines by priority", () => {
    assert.deepEqual(
      earliest([
        { timer: "pong", at: 5 },
        { timer: "heartbeat", at: 5 },
      ]),
      { timer: "pong", at: 5 },
    );
  });

  test("skips the absent ones, and is null when none is present", () => {
    assert.deepEqual(earliest([null, { timer: "scan", at: 7 }, null]), { timer: "scan", at: 7 });
    assert.equal(earliest([null, null]), null);
    assert.equal(earliest([]), null);
  });
});
