// iOS simulators through `/usr/bin/xcrun simctl list -j devices`, on macOS only, run again only
// when the simulators' files changed (below). The parser is pure and tested on captured
// output. An available simulator is "online" whether booted or shut down (a job can boot it);
// `simState` says which.
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { z } from "zod";
import type { RawDevice } from "../device.js";
import { isExecutableFile, runTool, SYSTEM_TOOLS } from "./find-command.js";
import type { DeviceProvider } from "./provider.js";
import { reuseWhileUnchanged } from "./reuse.js";

/** How long simctl's answer is reused at most while the simulators' files say nothing changed. */
export const SIMULATORS_MAX_AGE_MS = 10 * 60_000;

/**
 * `xcrun simctl list` starts CoreSimulator's service and takes hundreds of ms; each
 * simulator is a directory with a device.plist that CoreSimulator rewrites when the simulator
 * is created, renamed, booted or shut down. So a periodic scan lists those directories and
 * their device.plist times, and runs simctl only when they changed (reuse.ts), or every
 * SIMULATORS_MAX_AGE_MS (a runtime installed or removed changes no device.plist).
 */
export function createIosSimulatorProvider(
  devicesDir = path.join(os.homedir(), "Library", "Developer", "CoreSimulator", "Devices"),
): DeviceProvider {
  const list = reuseWhileUnchanged(
    () => readSimulatorsSignal(devicesDir),
    async ({ timeoutMs }) => {
      if (!(await isExecutableFile(SYSTEM_TOOLS.xcrun))) return [];
      return parseSimctlList(await runTool(SYSTEM_TOOLS.xcrun, ["simctl", "list", "-j", "devices"], { timeoutMs }));
    },
    SIMULATORS_MAX_AGE_MS,
  );
  return {
    name: "ios-simulator",
    scan: async (options) => (process.platform === "darwin" ? list(options) : []),
  };
}

/** Each simulator directory with its device.plist's modification time; "none" without the directory. */
export async function readSimulatorsSignal(devicesDir: string): Promise<string> {
  let names: string[];
  try {
    names = (await fs.readdir(devicesDir)).sort();
  } catch {
    return "none";
  }
  const stamps = await Promise.all(
    names.map((name) =>
      fs.stat(path.join(devicesDir, name, "device.plist")).then(
        (stat) => `${name}@${stat.mtimeMs}`,
        () => name,
      ),
    ),
  );
  return stamps.join(",");
}

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
