// The recycle decision as a pure function: readings, limits and the time go in, a reason or
// null comes out. No processes, no timers.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  describeRecycle,
  evaluateRecycle,
  isPastHardCeiling,
  isRecycleLoop,
  isTooOld,
  RECYCLE_STREAK_WARN,
  limitsForWorker,
  noteRecycleStreak,
  type RecycleLimits,
  type WorkerHealth,
} from "../../src/workers/parent/recycle-policy.js";
import { defaultRecycleLimits } from "../../src/config/normalize.js";
import { parseProcLimits } from "../../src/workers/parent/rlimit.js";

const MiB = 1024 * 1024;
const SPAWNED = 1_000_000;
const LATER = SPAWNED + 120_000;

const limits: RecycleLimits = {
  maxRssBytes: 500 * MiB,
  hardRssBytes: 1000 * MiB,
  maxOpenFds: 100,
  maxAgeMs: 600_000,
  ageJitter: 0,
  maxJobs: 50,
};
const healthy: WorkerHealth = { rssBytes: 100 * MiB, openFds: 20, jobsRun: 3, startedAt: SPAWNED };

describe("evaluateRecycle", () => {
  test("a worker under every limit is kept", () => {
    assert.equal(evaluateRecycle(healthy, limits, LATER), null);
  });

  test("RSS at the soft limit recycles for memory", () => {
    assert.equal(evaluateRecycle({ ...healthy, rssBytes: 500 * MiB }, limits, LATER), "memory");
  });

  test("open fds at the limit recycle for fds", () => {
    assert.equal(evaluateRecycle({ ...healthy, openFds: 100 }, limits, LATER), "fds");
  });

  test("age at the limit recycles for age", () => {
    assert.equal(evaluateRecycle(healthy, limits, SPAWNED + 600_000), "age");
    assert.equal(evaluateRecycle(healthy, limits, SPAWNED + 599_999), null);
  });

  test("the jobs count at the limit recycles for jobs", () => {
    assert.equal(evaluateRecycle({ ...healthy, jobsRun: 50 }, limits, LATER), "jobs");
  });

  test("memory wins over fds, fds over age, age over jobs", () => {
    const everything = { rssBytes: 600 * MiB, openFds: 500, jobsRun: 99, startedAt: SPAWNED };
    const old = SPAWNED + 700_000;
    assert.equal(evaluateRecycle(everything, limits, old), "memory");
    assert.equal(evaluateRecycle({ ...everything, rssBytes: 1 }, limits, old), "fds");
    assert.equal(evaluateRecycle({ ...everything, rssBytes: 1, openFds: 1 }, limits, old), "age");
    assert.equal(evaluateRecycle({ ...everything, rssBytes: 1, openFds: 1 }, limits, LATER), "jobs");
  });

  test("a null limit turns its signal off", () => {
    const off = { ...limits, maxRssBytes: null, maxOpenFds: null, maxAgeMs: null, maxJobs: null };
    assert.equal(
      evaluateRecycle(
        { rssBytes: 10_000 * MiB, openFds: 10_000, jobsRun: 10_000, startedAt: SPAWNED },
        off,
        SPAWNED + 1e9,
      ),
      null,
    );
  });

  test("a missing reading skips its signal and lets the next one decide", () => {
    const unknown = { ...healthy, rssBytes: null, openFds: null };
    assert.equal(evaluateRecycle(unknown, limits, LATER), null);
    assert.equal(evaluateRecycle({ ...unknown, jobsRun: 50 }, limits, LATER), "jobs");
  });

  describe("a young worker", () => {
    const young = SPAWNED + 1;
    // As an operator sets them: the defaults with a soft RSS and an fd limit of their own.
    const operator: RecycleLimits = { ...defaultRecycleLimits(1024), maxRssBytes: 500 * MiB, maxOpenFds: 100 };

    test("a young worker over its soft RSS limit is recycled at its first job boundary", () => {
      assert.equal(evaluateRecycle({ ...healthy, jobsRun: 1, rssBytes: 500 * MiB }, operator, young), "memory");
      assert.equal(evaluateRecycle({ ...healthy, jobsRun: 1, rssBytes: 500 * MiB - 1 }, operator, young), null);
    });

    test("a young worker over its soft RSS limit is recycled even far below the hard ceiling", () => {
      assert.equal(
        evaluateRecycle(
          { ...healthy, jobsRun: 1, rssBytes: 501 * MiB },
          { ...operator, hardRssBytes: 100_000 * MiB },
          young,
        ),
        "memory",
      );
      assert.equal(
        evaluateRecycle({ ...healthy, jobsRun: 1, rssBytes: 501 * MiB }, { ...operator, hardRssBytes: null }, young),
        "memory",
      );
    });

    test("a young worker over its fd limit is recycled at its first job boundary", () => {
      assert.equal(evaluateRecycle({ ...healthy, jobsRun: 1, openFds: 100 }, operator, young), "fds");
      assert.equal(
        evaluateRecycle({ ...healthy, jobsRun: 1, openFds: 2_520 }, { ...operator, maxOpenFds: 300 }, young),
        "fds",
      );
    });

    test("a worker past an age limit set below its age is recycled however little it ran", () => {
      assert.equal(evaluateRecycle(healthy, { ...operator, maxAgeMs: 1 }, young), "age");
    });
  });
});

describe("isTooOld", () => {
  test("an idle worker is too old once its age reaches its own limit", () => {
    assert.equal(isTooOld(SPAWNED, limits, SPAWNED + 599_999), false);
    assert.equal(isTooOld(SPAWNED, limits, SPAWNED + 600_000), true);
  });

  test("an age limit that is off never makes a worker too old", () => {
    assert.equal(isTooOld(SPAWNED, { ...limits, maxAgeMs: null }, SPAWNED + 1e12), false);
  });
});

describe("isPastHardCeiling", () => {
  test("an RSS at or past the hard ceiling is past it; an unknown RSS or a ceiling that is off never is", () => {
    assert.equal(isPastHardCeiling(1000 * MiB - 1, limits), false);
    assert.equal(isPastHardCeiling(1000 * MiB, limits), true);
    assert.equal(isPastHardCeiling(null, limits), false);
    assert.equal(isPastHardCeiling(10_000 * MiB, { ...limits, hardRssBytes: null }), false);
  });
});

describe("noteRecycleStreak", () => {
  test("a streak warns once, when it reaches RECYCLE_STREAK_WARN", () => {
    assert.deepEqual([RECYCLE_STREAK_WARN - 1, RECYCLE_STREAK_WARN, RECYCLE_STREAK_WARN + 1].map(isRecycleLoop), [
      false,
      true,
      false,
    ]);
  });

  test("counts workers recycled for memory or fds right after their first job", () => {
    let streak = 0;
    for (let i = 0; i < RECYCLE_STREAK_WARN; i++) streak = noteRecycleStreak(streak, i % 2 === 0 ? "memory" : "fds", 1);
    assert.equal(streak, RECYCLE_STREAK_WARN);
  });

  test("starts again when a worker is kept, lasts several jobs, or is recycled for age or jobs", () => {
    assert.equal(noteRecycleStreak(2, null, 1), 0);
    assert.equal(noteRecycleStreak(2, "memory", 2), 0);
    assert.equal(noteRecycleStreak(2, "age", 1), 0);
    assert.equal(noteRecycleStreak(2, "jobs", 1), 0, "a jobs limit of 1 is a deliberate fresh worker per job");
  });
});

describe("limitsForWorker", () => {
  const jittery = { ...limits, maxAgeMs: 1000_000, ageJitter: 0.1 };

  test("jitters the age limit down by up to the jitter fraction, from the random number passed in", () => {
    assert.equal(limitsForWorker(jittery, 0).maxAgeMs, 1000_000);
    assert.equal(limitsForWorker(jittery, 0.5).maxAgeMs, 950_000);
    assert.equal(limitsForWorker(jittery, 0.999_999).maxAgeMs, 900_000);
  });

  test("marks the jitter as applied and leaves every other limit alone", () => {
    const drawn = limitsForWorker(jittery, 0.3);
    assert.equal(drawn.ageJitter, 0);
    assert.deepEqual({ ...drawn, maxAgeMs: 0 }, { ...jittery, ageJitter: 0, maxAgeMs: 0 });
  });

  test("keeps an age limit that is off, off", () => {
    assert.equal(limitsForWorker({ ...jittery, maxAgeMs: null }, 0.5).maxAgeMs, null);
  });

  test("clamps a jitter or a random number out of range instead of making an age negative", () => {
    assert.equal(limitsForWorker({ ...jittery, ageJitter: 3 }, 2).maxAgeMs, 0);
    assert.equal(limitsForWorker({ ...jittery, ageJitter: -1 }, 0.5).maxAgeMs, 1000_000);
  });
});

describe("describeRecycle", () => {
  test("names the reading and the limit it crossed", () => {
    assert.equal(
      describeRecycle("memory", { ...healthy, rssBytes: 512 * MiB }, limits, LATER),
      "RSS 512.0 MiB reached the soft limit 500.0 MiB",
    );
    assert.equal(
      describeRecycle("fds", { ...healthy, openFds: 101 }, limits, LATER),
      "101 open file descriptors reached the limit 100",
    );
    assert.equal(describeRecycle("age", healthy, limits, SPAWNED + 600_000), "age 600 s reached its limit 600 s");
    assert.equal(
      describeRecycle("jobs", { ...healthy, jobsRun: 50 }, limits, LATER),
      "50 jobs run reached the limit 50",
    );
  });
});

describe("parseProcLimits", () => {
  const limits = [
    "Limit                     Soft Limit           Hard Limit           Units     ",
    "Max open files            20000                1048576              files     ",
  ].join("\n");

  test("reads the soft open-files limit", () => {
    assert.equal(parseProcLimits(limits), 20_000);
  });

  test("reads unlimited as no practical limit, and anything else as unknown", () => {
    assert.equal(parseProcLimits(limits.replace("20000", "unlimited")), Number.MAX_SAFE_INTEGER);
    assert.equal(parseProcLimits("Max processes 10 10"), null);
  });
});
