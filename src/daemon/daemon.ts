// The composition root of `runner start` after its checks: recovers what a crash left
// behind (orphaned jobs, unacknowledged results), then wires the channel driver to the
// job host, the outbox and the signals, and runs until the driver exits.
import type { Logger } from "../log/logger.js";
import { ChannelDriver, type DriverExit } from "../channel/driver.js";
import { keyOf, type MachineConfig } from "../channel/machine.js";
import { checkControlPlaneUrl } from "../config/transport.js";
import { CHANNEL_PATH, DEFAULT_MAX_FRAME_BYTES, type JobResult } from "../protocol/channel.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../protocol/version.js";
import { JobJournal, recoverOrphans } from "../jobs/journal.js";
import type { StateFiles } from "../config/paths.js";
import { ensureDir, removeInterruptedWrites } from "../state/files.js";
import { Outbox } from "../state/outbox.js";
import type { Registration } from "../state/registration.js";
import { JobHost } from "./job-host.js";
import type { ChannelSettings, FitnessSettings, PoolSettings, StatusSettings } from "../config/normalize.js";
import { WorkerPool } from "../workers/parent/pool.js";
import { prepareWorkRoot } from "../jobs/work-dir.js";
import { startDiskGuard } from "./disk-guard.js";
import { createDeviceSync, type DeviceSyncSettings } from "../devices/index.js";
import { systemClock } from "../time/deadline.js";
import { countSent, countStep, newCounters } from "../status/counters.js";
import { startStatusServer } from "../status/server.js";
import { chooseProxy, type ProxyConfig } from "../net/proxy.js";
import { channelTunnel } from "../net/proxy-agents.js";
import { releaseOptimizingCompiler } from "./optimizer.js";

export interface DaemonOptions {
  registration: Registration;
  credential: string;
  files: StateFiles;
  logger: Logger;
  insecurePlaintext: boolean;
  /** Which proxy, if any, carries the WebSocket (the setting and the environment's variables). */
  proxy: ProxyConfig;
  /** Each part's config, as config/normalize.ts builds it from the settings. */
  channel: ChannelSettings;
  pool: PoolSettings;
  /** What the pool's default fd limit was worked out from; logged with the limits. */
  rlimitNofile: number;
  deviceSync: DeviceSyncSettings;
  /** Where command jobs without a cwd get their own directories, and the free space they need. */
  fitness: FitnessSettings;
  /** Where the status endpoints are served (src/status/server.ts). */
  status: StatusSettings;
}

/** A connection attempt's timeout before any welcome, and its ceiling after (see handshakeTimeout in the machine). */
const HANDSHAKE_TIMEOUT_MS = 10_000;

export async function runDaemon(options: DaemonOptions): Promise<DriverExit> {
  const { registration, files, logger } = options;
  const startedAt = systemClock();
  const url = channelUrl(registration.url, options.insecurePlaintext);
  // Decided once: the channel's URL never changes while the daemon runs.
  const proxy = chooseProxy(url, options.proxy);
  if (proxy === null) logger.info({ proxy: null }, "the control plane is reached directly (no proxy applies)");
  else
    logger.info(
      { proxy: proxy.redacted, from: proxy.from },
      `the control plane is reached through the proxy ${proxy.redacted} (${proxy.from})`,
    );
  const tunnel = proxy === null ? undefined : await channelTunnel(proxy, HANDSHAKE_TIMEOUT_MS);
  const outbox = new Outbox(files.outbox);
  const journal = new JobJournal(files.running);
  await ensureDir(files.outbox);
  await ensureDir(journal.dir);
  // `runner start` holds the lock: half-written files here are a killed daemon's debris.
  for (const dir of [files.outbox, journal.dir]) {
    const removed = await removeInterruptedWrites(dir);
    if (removed.length > 0)
      logger.info({ dir, files: removed }, "removed the temp files of writes a killed runner left unfinished");
  }

  const held = await outbox.list();
  for (const bad of held.setAside)
    logger.error({ file: bad.file, reason: bad.reason }, "set aside a damaged result file in the outbox");
  const pending = [...held.results, ...(await recoverAfterCrash(journal, outbox, held.results, logger))];
  // After recovery (no job process is left): what a killed runner's jobs left there goes.
  const leftovers = await prepareWorkRoot(options.fitness.workDir);
  if (leftovers.length > 0)
    logger.info(
      { workDir: options.fitness.workDir, removed: leftovers },
      "removed job directories an earlier run left behind",
    );

  const config: MachineConfig = {
    runnerId: registration.runnerId,
    protocolVersion: PROTOCOL_VERSION,
    agentVersion: AGENT_VERSION,
    labels: registration.labels,
    ...options.channel,
    handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
  };
  const { limits, handlers } = options.pool;
  logger.info({ limits, rlimitNofile: options.rlimitNofile, handlers: Object.keys(handlers) }, "worker pool limits");
  const pool = new WorkerPool({ ...options.pool, logger });
  const host = new JobHost(pool, journal, outbox, logger, (input) => driver.input(input), options.fitness.workDir);
  const deviceSync = createDeviceSync({ stateDir: files.stateDir, settings: options.deviceSync, logger });
  // The status counts: plain fields the channel's observer moves (src/status/counters.ts).
  const counters = newCounters(startedAt);
  const driver = new ChannelDriver(
    config,
    { pending },
    {
      url,
      credential: options.credential,
      // What the runner accepts; what it sends follows the welcome's maxFrameBytes.
      maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
      logger,
      ports: host,
      companions: [deviceSync.companion],
      onBackpressure: (slow) => (slow ? pool.pauseOutput() : pool.resumeOutput()),
      observer: {
        stepped: (step, now) => {
          countStep(counters, step, now);
          if (step.after.connection.phase === "connected") releaseOptimizingCompiler();
        },
        sent: (type, bytes) => countSent(counters, type, bytes),
      },
      ...(tunnel === undefined ? {} : { tunnel }),
    },
  );

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals === 1) driver.input({ type: "drain", reason: signal });
    else driver.input({ type: "stop_now", reason: `second signal (${signal})` });
  };
  // SIGUSR2 (`runner devices --rescan`) rescans the devices now. Without this handler it would kill the daemon.
  const onRescan = () => void deviceSync.rescan();
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  process.on("SIGUSR2", onRescan);
  logger.info(
    { url, runnerId: registration.runnerId, capacity: config.capacity, heldResults: pending.length },
    "runner started",
  );
  const diskGuard = await startDiskGuard({
    workRoot: options.fitness.workDir,
    minFreeBytes: options.fitness.minFreeDiskBytes,
    feed: (input) => driver.input(input),
    logger,
  });
  const status = await startStatusServer({
    ...options.status,
    read: () => ({
      state: driver.current,
      counters,
      pool: pool.stats(),
      devices: deviceSync.status(),
      pid: process.pid,
      startedAt,
      controlPlaneUrl: registration.url,
    }),
    now: systemClock,
    logger,
  });
  try {
    const exit = await driver.start();
    // Stopping for a reason other than a drain (a revoked credential, say) may leave jobs running.
    await host.stopAll("the runner is stopping: " + exit.reason);
    await Promise.all([pool.close(), deviceSync.close()]);
    return exit;
  } finally {
    tunnel?.agent.destroy();
    diskGuard.stop();
    await status.close();
    process.off("SIGTERM", onSignal);
    process.off("SIGINT", onSignal);
    process.off("SIGUSR2", onRescan);
  }
}

/**
 * After a kill -9: kill the jobs it left running and record each as failed, exactly once.
 * Returns the results it added to the outbox. The outbox is written before the journal is
 * cleared, so a crash in between repeats this step instead of losing a result; and a job whose
 * real result reached the outbox before the crash keeps it.
 */
async function recoverAfterCrash(
  journal: JobJournal,
  outbox: Outbox,
  held: JobResult[],
  logger: Logger,
): Promise<JobResult[]> {
  const { results, killed, setAside } = await recoverOrphans(journal, new Date());
  for (const bad of setAside) logger.error(bad, "set aside a damaged file in the running-jobs journal");
  for (const orphan of killed) logger.warn(orphan, "killed the process tree of a job orphaned by an earlier crash");
  const heldKeys = new Set(held.map(keyOf));
  const added = results.filter((r) => !heldKeys.has(keyOf(r)));
  for (const result of added) await outbox.put(result);
  for (const result of results) await journal.remove(result);
  if (added.length > 0)
    logger.warn(
      { jobs: added.map((r) => r.jobId) },
      `reported ${added.length} orphaned job(s) as failed: agent restarted`,
    );
  return added;
}

export function channelUrl(controlPlaneUrl: string, insecurePlaintext: boolean): string {
  const base = new URL(checkControlPlaneUrl(controlPlaneUrl, insecurePlaintext));
  base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
  base.pathname = base.pathname.replace(/\/$/, "") + CHANNEL_PATH;
  return base.toString();
}
