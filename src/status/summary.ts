// The daemon's /status as the lines `runner status` prints under the local view. Pure.
import type { StatusView } from "./view.js";

export function daemonSummary(view: StatusView): string[] {
  const c = view.connection;
  const lines = [`daemon: pid ${view.pid}, runner ${view.agentVersion}, up since ${view.startedAt}`];
  lines.push(
    c.state === "connected"
      ? `  connected to ${view.controlPlaneUrl} since ${c.since}`
      : `  not connected to ${view.controlPlaneUrl}: ${c.state} since ${c.since}, ${c.failures} failed attempt(s) in a row`,
  );
  lines.push(`  mode: ${view.mode}; ${view.ready ? "ready for jobs" : `not ready: ${view.notReadyReason}`}`);
  const running = view.jobs.running;
  lines.push(`  jobs running: ${running.length} of ${view.capacity}`);
  for (const job of running)
    lines.push(
      `    ${job.jobId} attempt ${job.attempt}: ${job.started ? "running" : "waiting for a worker"} for ${seconds(job.ageSeconds)}`,
    );
  const outcomes = Object.entries(view.jobs.byOutcome).map(([outcome, n]) => `${n} ${outcome}`);
  lines.push(`  jobs finished since start: ${outcomes.join(", ")}`);
  lines.push(`  workers: ${view.workers.length}`);
  for (const w of view.workers)
    lines.push(
      `    pid ${w.pid} ${w.state}, ${w.jobsRun} job(s) run, up ${seconds(w.ageSeconds)}, RSS ${mib(w.rssBytes)}, ${w.openFds ?? "?"} open fds`,
    );
  lines.push(`  outbox: ${view.outbox.results} result(s) awaiting acknowledgement`);
  const d = view.devices;
  lines.push(
    `  devices: ${d.inventory ?? "not scanned yet"}${d.inventory === null ? "" : " row(s)"}, ${d.confirmed} confirmed; ` +
      `last scan ${d.lastScanAt ?? "never"}, last acknowledged ${d.lastAckAt ?? "never"}`,
  );
  lines.push(`  last error: ${view.lastError ? `${view.lastError.at} ${view.lastError.message}` : "none"}`);
  return lines;
}

function seconds(value: number): string {
  return value < 60 ? `${value.toFixed(1)} s` : `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

function mib(bytes: number | null): string {
  return bytes === null ? "?" : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
