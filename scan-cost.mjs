import { createProviders, scanDevices } from "./dist/src/devices/index.js";
import { DEVICE_PROVIDER_NAMES } from "./dist/src/devices/provider-names.js";
const providers = createProviders([...DEVICE_PROVIDER_NAMES]);
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
const children = () => { const r = process.resourceUsage(); return 0; };
for (const [label, fresh] of [["fresh", true], ["periodic", false], ["periodic", false], ["periodic", false]]) {
  const c0 = cpu(); const t0 = performance.now();
  const r = await scanDevices(providers, { timeoutMs: 10000, fresh, now: performance.now() });
  console.log(label, "wall", (performance.now() - t0).toFixed(1), "ms, own cpu", (cpu() - c0).toFixed(1), "ms", JSON.stringify(r.reports.map((p) => [p.name, p.ms])));
}
