// From resolved settings to each part's config: the run-time defaults and the unit conversions,
// with the platform facts and the rlimit passed in (no real process state).
import path from "node:path";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  MAX_DEFAULT_WORKER_FDS,
  defaultRecycleLimits,
  defaultWorkerMaxFds,
  normalizeSettings,
  recycleLimits,
  type RunTimeFacts,
  type WorkerLimitSettings,
} from "../../src/config/normalize.js";
import { stateFiles } from "../../src/config/paths.js";
import { defaultSettings, resolveSettings } from "../../src/config/resolve.js";
import { SETTINGS } from "../../src/config/settings.js";
import { diskRefusal } from "../../src/jobs/work-dir.js";

const MiB = 1024 * 1024;
const facts: RunTimeFacts = { platform: "linux", env: { XDG_STATE_HOME: "/xdg" }, home: "/home/u", rlimitNofile: 4096 };
const defaults = normalizeSettings(defaultSettings(), facts).settings;
/** The default settings but for the given worker limits. */
const limitsOf = (given: Partial<WorkerLimitSettings>) => recycleLimits({ ...defaults, ...given });
const fromFlags = (flags: Record<string, unknown>, given: RunTimeFacts = facts) =>
  normalizeSettings(resolveSettings({ flags, env: {} }).settings, given);

describe("unit conversions", () => {
  test("the memory limits are given in MB and reach the recycle policy in bytes", () => {
    const limits = limitsOf({ workerMaxRssMb: 300, workerHardRssMb: 600 });
    assert.equal(limits.maxRssBytes, 300 * MiB);
    assert.equal(limits.hardRssBytes, 600 * MiB);
  });

  test("the age limit is given in seconds and reaches the recycle policy in milliseconds", () => {
    assert.equal(limitsOf({ workerMaxAgeS: 90 }).maxAgeMs, 90_000);
  });

  test("the fd and jobs limits keep their unit", () => {
    const limits = limitsOf({ workerMaxFds: 64, workerMaxJobs: 5 });
    assert.deepEqual([limits.maxOpenFds, limits.maxJobs], [64, 5]);
  });

  test("0 turns every worker limit off, which the recycle policy reads as null", () => {
    const limits = limitsOf({
      workerMaxRssMb: 0,
      workerHardRssMb: 0,
      workerMaxFds: 0,
      workerMaxAgeS: 0,
      workerMaxJobs: 0,
    });
    assert.deepEqual(
      [limits.maxRssBytes, limits.hardRssBytes, limits.maxOpenFds, limits.maxAgeMs, limits.maxJobs],
      [null, null, null, null, null],
    );
  });

  test("off in a flag turns a worker limit off like 0", () => {
    const config = fromFlags({
      workerMaxRssMb: "off",
      workerHardRssMb: "off",
      workerMaxFds: "off",
      workerMaxAgeS: "off",
      workerMaxJobs: "off",
    });
    const { limits } = config.pool;
    assert.deepEqual(
      [limits.maxRssBytes, limits.hardRssBytes, limits.maxOpenFds, limits.maxAgeMs, limits.maxJobs],
      [null, null, null, null, null],
    );
  });

  test("each worker's age limit is jittered by up to 10%, as --worker-max-age-s's help says", () => {
    assert.equal(limitsOf({ workerMaxAgeS: 3600 }).ageJitter, 0.1);
    assert.match(SETTINGS.workerMaxAgeS.help, /up to 10% jitter/);
  });
});

describe("run-time defaults", () => {
  test("an unset fd limit is half the given RLIMIT_NOFILE", () => {
    assert.equal(normalizeSettings(defaultSettings(), { ...facts, rlimitNofile: 4096 }).pool.limits.maxOpenFds, 2048);
    assert.equal(normalizeSettings(defaultSettings(), { ...facts, rlimitNofile: 1024 }).settings.workerMaxFds, 512);
  });

  test("the default fd limit is at most 65536 and at least 1, whatever the rlimit", () => {
    assert.equal(defaultWorkerMaxFds(1_048_576), MAX_DEFAULT_WORKER_FDS);
    assert.equal(MAX_DEFAULT_WORKER_FDS, 65_536);
    assert.equal(defaultWorkerMaxFds(Number.MAX_SAFE_INTEGER), 65_536);
    assert.equal(defaultWorkerMaxFds(1), 1);
  });

  test("a given fd limit beats the rlimit's default", () => {
    const config = fromFlags({ workerMaxFds: "300" }, { ...facts, rlimitNofile: 100_000 });
    assert.equal(config.settings.workerMaxFds, 300);
    assert.equal(config.pool.limits.maxOpenFds, 300);
  });

  test("the default recycle limits are generous: 1 GiB soft, 2 GiB hard, an hour of age with 10% jitter, no jobs limit", () => {
    const d = defaultRecycleLimits(1024);
    assert.deepEqual(
      [d.maxRssBytes, d.hardRssBytes, d.maxAgeMs, d.ageJitter, d.maxJobs],
      [1024 * 1024 * 1024, 2048 * 1024 * 1024, 3600_000, 0.1, null],
    );
    assert.deepEqual(normalizeSettings(defaultSettings(), facts).pool.limits, defaultRecycleLimits(facts.rlimitNofile));
  });

  test("the default fd limit is half of RLIMIT_NOFILE, capped", () => {
    assert.equal(defaultRecycleLimits(1024).maxOpenFds, 512);
    assert.equal(defaultRecycleLimits(20_000).maxOpenFds, 10_000);
    assert.equal(defaultRecycleLimits(1_048_576).maxOpenFds, MAX_DEFAULT_WORKER_FDS);
  });

  test("the state dir is the platform's, the system one with --system, or --state-dir made absolute", () => {
    assert.equal(fromFlags({}).settings.stateDir, "/xdg/runner");
    assert.equal(fromFlags({ system: true }).settings.stateDir, "/var/lib/runner");
    assert.equal(fromFlags({ stateDir: "/srv/runner/" }).settings.stateDir, "/srv/runner");
    assert.equal(fromFlags({ stateDir: "relative" }).settings.stateDir, `${process.cwd()}/relative`);
  });

  test("the state dir's files are named under the state dir the config chose", () => {
    const config = fromFlags({ system: true });
    assert.deepEqual(config.files, stateFiles("/var/lib/runner"));
    assert.equal(config.service.stateDir, "/var/lib/runner");
  });
});

describe("each part's config", () => {
  test("with nothing given, each part carries its settings' defaults", () => {
    const config = normalizeSettings(defaultSettings(), facts);
    assert.deepEqual(config.channel, {
      capacity: SETTINGS.capacity.defaultValue,
      reconnectBaseMs: SETTINGS.reconnectBaseMs.defaultValue,
      reconnectCapMs: SETTINGS.reconnectCapMs.defaultValue,
      drainTimeoutMs: SETTINGS.drainTimeoutMs.defaultValue,
      once: false,
      exitAfterIdleMs: null,
    });
    assert.equal(config.pool.size, SETTINGS.capacity.defaultValue);
    assert.deepEqual(config.pool.handlers, SETTINGS.handlers.defaultValue);
    assert.deepEqual(config.deviceSync, {
      deviceProviders: SETTINGS.deviceProviders.defaultValue,
      deviceScanIntervalMs: SETTINGS.deviceScanIntervalMs.defaultValue,
      deviceRefreshMs: SETTINGS.deviceRefreshMs.defaultValue,
      deviceBatchSize: SETTINGS.deviceBatchSize.defaultValue,
      deviceProviderTimeoutMs: SETTINGS.deviceProviderTimeoutMs.defaultValue,
    });
    assert.deepEqual(config.controlPlane, {
      requestTimeoutMs: SETTINGS.requestTimeoutMs.defaultValue,
      insecurePlaintext: SETTINGS.insecurePlaintext.defaultValue,
      proxy: { setting: undefined, https: null, http: null, noProxy: null },
    });
    assert.deepEqual(config.service, {
      system: SETTINGS.system.defaultValue,
      stateDir: "/xdg/runner",
      drainTimeoutMs: SETTINGS.drainTimeoutMs.defaultValue,
    });
    assert.equal(config.rlimitNofile, facts.rlimitNofile);
  });

  test("with flags given, each part carries the flags' values", () => {
    const config = fromFlags({
      capacity: "4",
      reconnectBaseMs: "50",
      reconnectCapMs: "5000",
      drainTimeoutMs: "1000",
      once: true,
      exitAfterIdle: "90",
      requestTimeoutMs: "2500",
      insecurePlaintext: true,
      handlers: "build=/opt/build.mjs",
      workerMaxRssMb: "512",
      deviceProviders: "gpu,usb",
      deviceScanIntervalMs: "30000",
      deviceRefreshMs: "60000",
      deviceBatchSize: "250",
      deviceProviderTimeoutMs: "2000",
    });
    assert.deepEqual(config.channel, {
      capacity: 4,
      reconnectBaseMs: 50,
      reconnectCapMs: 5000,
      drainTimeoutMs: 1000,
      once: true,
      exitAfterIdleMs: 90_000,
    });
    assert.equal(config.pool.size, 4);
    assert.deepEqual(config.pool.handlers, { build: "/opt/build.mjs" });
    assert.equal(config.pool.limits.maxRssBytes, 512 * MiB);
    assert.deepEqual(config.deviceSync, {
      deviceProviders: ["gpu", "usb"],
      deviceScanIntervalMs: 30_000,
      deviceRefreshMs: 60_000,
      deviceBatchSize: 250,
      deviceProviderTimeoutMs: 2000,
    });
    assert.deepEqual(config.controlPlane, {
      requestTimeoutMs: 2500,
      insecurePlaintext: true,
      proxy: { setting: undefined, https: null, http: null, noProxy: null },
    });
    assert.equal(config.service.drainTimeoutMs, 1000);
  });
});

test("the work dir is work/ in the state dir, or --work-dir made absolute", () => {
  assert.equal(fromFlags({ stateDir: "/s", workDir: "rel/w" }).settings.workDir, path.resolve("rel/w"));
  const byDefault = fromFlags({ stateDir: "/s" }).settings.workDir;
  assert.equal(byDefault, stateFiles("/s").work);
  assert.equal(byDefault, path.join("/s", "work"));
});

test("the free-disk floor is given in MB and 0 turns the check off", () => {
  assert.equal(fromFlags({}).fitness.minFreeDiskBytes, 512 * 1024 * 1024);
  assert.equal(fromFlags({ minFreeDiskMb: "off" }).fitness.minFreeDiskBytes, null);
  assert.equal(fromFlags({ stateDir: "/s" }).fitness.workDir, path.join("/s", "work"));
});

test("a job is refused for disk only below the floor, with both figures and the setting named", () => {
  const MiB_ = 1024 * 1024;
  assert.equal(diskRefusal(600 * MiB_, 512 * MiB_, "/w"), null);
  assert.equal(diskRefusal(1, null, "/w"), null, "no floor, no check");
  assert.equal(
    diskRefusal(100 * MiB_, 512 * MiB_, "/w"),
    "low disk: 100 MiB free for /w, below --min-free-disk-mb 512",
  );
});
