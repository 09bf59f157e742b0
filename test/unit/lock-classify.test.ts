import { test } from "node:test";
import assert from "node:assert/strict";
import { classifyLock } from "../../src/state/lock.js";

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
