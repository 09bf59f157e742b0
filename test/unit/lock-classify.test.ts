import { test } from "node:test";
import assert from "node:assert/strict";
import { classifyLock } from "../../src/state/lock.js";
import { compareStarts, startTimeFromProcStat } from "../../src/state/process-start.js";

const owner = { pid: 4242, startTime: "1000", hostname: "h", acquiredAt: "2026-01-01T00:00:00Z" };

test("a lock whose owner is alive with the same start time is held", () => {
  assert.equal(classifyLock(owner, { alive: true, startTime: "1000" }).kind, "held");
});

test("a lock whose owner is dead is stale", () => {
  const state = classifyLock(owner, { alive: false, startTime: null });
  assert.equal(state.kind, "stale");
  assert.match(state.kind === "stale" ? state.reason : "", /not running/);
});

test("a lock whose pid now belongs to a younger process is stale", () => {
  const state = classifyLock(owner, { alive: true, startTime: "2000" });
  assert.equal(state.kind, "stale");
  assert.match(state.kind === "stale" ? state.reason : "", /another process/);
});

test("where start times cannot be read, a live pid is taken as the owner", () => {
  assert.equal(classifyLock({ ...owner, startTime: null }, { alive: true, startTime: "5" }).kind, "held");
});

test("macOS start times compare when both were read the locale-free way, and a younger process is told apart", () => {
  const macOwner = { ...owner, startTime: "lstart-utc:Mon Nov 30 21:31:34 2026" };
  assert.equal(classifyLock(macOwner, { alive: true, startTime: "lstart-utc:Mon Nov 30 21:31:34 2026" }).kind, "held");
  assert.equal(classifyLock(macOwner, { alive: true, startTime: "lstart-utc:Mon Nov 30 22:05:10 2026" }).kind, "stale");
});

test("a lock written before start times were locale-free is taken as held by its live pid, never as reused", () => {
  // An older runner under launchd recorded lstart in its own locale; a new reader cannot
  // compare that with its own form, and taking over a live runner's lock is the worse mistake.
  const older = { ...owner, startTime: "Mo 30 Nov 21:31:34 2026" };
  assert.equal(classifyLock(older, { alive: true, startTime: "lstart-utc:Mon Nov 30 21:31:34 2026" }).kind, "held");
  assert.equal(compareStarts(older.startTime, "lstart-utc:Mon Nov 30 21:31:34 2026"), "unknown");
  assert.equal(compareStarts("1000", null), "unknown");
  assert.equal(compareStarts("1000", "1000"), "same");
  assert.equal(compareStarts("1000", "1001"), "different");
});

test("/proc/<pid>/stat gives field 22 even when the command name holds spaces and parentheses", () => {
  const stat =
    "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
  assert.equal(startTimeFromProcStat(stat), "987654");
});
