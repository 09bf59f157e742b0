// The Prometheus metrics of /metrics, as plain metric families in prom-client's own JSON form
// (what `registry.getMetricsAsJSON()` returns): built from the status parts, pure, and turned
// into the text format by prom-client only when scraped (exposition.ts). README.md, "Status
// and metrics", lists every name here.
import { OUTCOMES } from "../protocol/channel.js";
import type { HistogramCounts } from "./counters.js";
import { RECONNECT_REASONS } from "./counters.js";
import { readiness, type StatusParts } from "./snapshot.js";
import { RECYCLE_REASONS } from "../workers/parent/recycle-policy.js";

export interface MetricSample {
  value: number;
  labels: Record<string, string | number>;
  /** For a histogram's series: `<name>_bucket`, `<name>_sum`, `<name>_count`. */
  metricName?: string;
}

export interface MetricFamily {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  /** How prom-client's aggregate() combines one family from several registries: here there is one. */
  aggregator: "sum";
  values: MetricSample[];
}

export function metricFamilies(parts: StatusParts): MetricFamily[] {
  const { state, counters, pool, devices } = parts;
  const family = (name: string, type: MetricFamily["type"], help: string, values: MetricSample[]): MetricFamily => ({
    name,
    help,
    type,
    aggregator: "sum",
    values,
  });
  const one = (value: number): MetricSample[] => [{ value, labels: {} }];
  const live = pool.workers.filter((w) => w.state !== "gone");
  return [
    family("runner_connected", "gauge", "1 while the channel to the control plane is connected, else 0", [
      { value: state.connection.phase === "connected" ? 1 : 0, labels: {} },
    ]),
    family("runner_ready", "gauge", "1 while the runner would take a job (what /readyz answers 200 for), else 0", [
      { value: readiness(state).ready ? 1 : 0, labels: {} },
    ]),
    family(
      "runner_jobs_total",
      "counter",
      "Job results this daemon produced, by outcome",
      OUTCOMES.map((outcome) => ({ value: counters.jobsByOutcome[outcome], labels: { outcome } })),
    ),
    family(
      "runner_jobs_running",
      "gauge",
      "Jobs accepted and not yet finished",
      one(Object.keys(state.running).length),
    ),
    histogram(
      "runner_job_dispatch_to_start_seconds",
      "Seconds from the runner accepting an assignment to the job's worker reporting it started",
      counters.dispatchToStart,
    ),
    family(
      "runner_reconnects_total",
      "counter",
      "Connections (or attempts) lost and retried later, by reason",
      RECONNECT_REASONS.map((reason) => ({ value: counters.reconnects[reason], labels: { reason } })),
    ),
    family(
      "runner_worker_recycles_total",
      "counter",
      "Workers retired at a job boundary for crossing a limit, by reason",
      RECYCLE_REASONS.map((reason) => ({
        value: pool.recycled[reason],
        labels: { reason },
      })),
    ),
    family("runner_workers", "gauge", "Worker processes alive", one(live.length)),
    family(
      "runner_worker_rss_bytes",
      "gauge",
      "Each worker's resident memory, as it last reported it (at its start and after each job)",
      live.flatMap((w) => (w.rssBytes === null ? [] : [{ value: w.rssBytes, labels: { pid: w.pid } }])),
    ),
    family(
      "runner_worker_open_fds",
      "gauge",
      "Each worker's open file descriptors, as it last reported them (at its start and after each job)",
      live.flatMap((w) => (w.openFds === null ? [] : [{ value: w.openFds, labels: { pid: w.pid } }])),
    ),
    family(
      "runner_outbox_results",
      "gauge",
      "Job results in the outbox not yet acknowledged by the control plane",
      one(Object.keys(state.pending).length),
    ),
    family("runner_device_rows", "gauge", "Device rows: of the latest scan (inventory) and acknowledged (confirmed)", [
      { value: devices.inventory ?? 0, labels: { set: "inventory" } },
      { value: devices.confirmed, labels: { set: "confirmed" } },
    ]),
    family(
      "runner_device_sync_sent_bytes_total",
      "counter",
      "Bytes of device sync frames sent to the control plane",
      one(counters.deviceBytesSent),
    ),
  ];
}

/** Prometheus histogram series: cumulative `_bucket`s (le), then `_sum` and `_count`. */
function histogram(name: string, help: string, counts: HistogramCounts): MetricFamily {
  let cumulative = 0;
  const buckets: MetricSample[] = counts.bounds.map((bound, i) => {
    cumulative += counts.counts[i]!;
    return { value: cumulative, labels: { le: bound }, metricName: `${name}_bucket` };
  });
  return {
    name,
    help,
    type: "histogram",
    aggregator: "sum",
    values: [
      ...buckets,
      { value: counts.count, labels: { le: "+Inf" }, metricName: `${name}_bucket` },
      { value: counts.sum, labels: {}, metricName: `${name}_sum` },
      { value: counts.count, labels: {}, metricName: `${name}_count` },
    ],
  };
}
