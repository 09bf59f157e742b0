// The metric families in Prometheus's text format, by prom-client. Loaded with a dynamic
// import at the first scrape, so a daemon nobody scrapes never loads it. The families are
// prom-client's own JSON form, and `AggregatorRegistry.aggregate` is its documented way to make
// a registry of them: the counts stay in the daemon's plain objects (counters.ts) and are
// never kept twice.
import type { MetricFamily } from "./metric-families.js";

let promClient: Promise<typeof import("prom-client")> | null = null;

export async function renderMetrics(families: MetricFamily[]): Promise<{ contentType: string; body: string }> {
  const prom = await (promClient ??= import("prom-client"));
  const registry = prom.AggregatorRegistry.aggregate([families]);
  return { contentType: registry.contentType, body: await registry.metrics() };
}
