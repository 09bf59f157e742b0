// iOS simulators through `/usr/bin/xcrun simctl list -j devices`, on macOS only. The parser is pure and
// tested on captured output. An available simulator is "online" whether booted or shut down
// (a job can boot it); `simState` says which.
import { z } from "zod";
import type { RawDevice } from "../device.js";
import { isExecutableFile, runTool, SYSTEM_TOOLS } from "./find-command.js";
import type { DeviceProvider } from "./provider.js";

export const iosSimulatorProvider: DeviceProvider = {
  name: "ios-simulator",
  async scan({ timeoutMs }) {
    if (process.platform !== "darwin") return [];
    if (!(await isExecutableFile(SYSTEM_TOOLS.xcrun))) return [];
    return parseSimctlList(await runTool(SYSTEM_TOOLS.xcrun, ["simctl", "list", "-j", "devices"], { timeoutMs }));
  },
};

const simulatorSchema = z
  .object({
    udid: z.string().min(1),
    name: z.string(),
    state: z.string().optional(),
    isAvailable: z.boolean().optional(),
    /** Xcode before 10.1: "(available)" or "(unavailable, runtime profile not found)". */
    availability: z.string().optional(),
    availabilityError: z.string().optional(),
    deviceTypeIdentifier: z.string().optional(),
  })
  .passthrough();
const simctlListSchema = z.object({ devices: z.record(z.string(), z.array(simulatorSchema)) });

/** Throws when the output is not simctl's JSON: a provider failure, reported as such. */
export function parseSimctlList(output: string): RawDevice[] {
  const parsed = simctlListSchema.parse(JSON.parse(output));
  const devices: RawDevice[] = [];
  for (const [runtimeKey, simulators] of Object.entries(parsed.devices)) {
    const runtime = describeRuntime(runtimeKey);
    if (runtime.platform !== "iOS") continue;
    for (const sim of simulators) {
      const available = sim.isAvailable ?? !/unavailable/i.test(sim.availability ?? "");
      devices.push({
        id: `ios-sim:${sim.udid}`,
        kind: "ios-simulator",
        name: sim.name,
        state: available ? "online" : "unavailable",
        attributes: {
          udid: sim.udid,
          runtime: runtime.label,
          osVersion: runtime.version,
          deviceType: sim.deviceTypeIdentifier?.replace(/^com\.apple\.CoreSimulator\.SimDeviceType\./, ""),
          simState: sim.state,
          availabilityError: sim.availabilityError,
        },
      });
    }
  }
  return devices;
}

/** "com.apple.CoreSimulator.SimRuntime.iOS-17-2" (or, before Xcode 10.1, "iOS 17.2") → iOS, 17.2. */
export function describeRuntime(key: string): { platform: string; version: string | undefined; label: string } {
  const match = /(?:SimRuntime\.)?([A-Za-z]+)[- ]([\d]+(?:[-.]\d+)*)$/.exec(key);
  if (!match) return { platform: key, version: undefined, label: key };
  const version = match[2]!.replace(/-/g, ".");
  return { platform: match[1]!, version, label: `${match[1]} ${version}` };
}
