// GPUs and displays, both from one `si.graphics()` call (on Linux it runs lspci, clinfo,
// xdpyinfo and xrandr through a shell, and nvidia-smi where there is one; system_profiler on
// macOS): the most expensive scan there is, for an inventory that rarely changes. So it runs
// on the first scan, on every fresh one (a connect, `runner devices --rescan`), when a cheap
// signal says something changed (Linux: the DRM cards and connectors in /sys/class/drm and
// each connector's status), and at least every GRAPHICS_MAX_AGE_MS; in between, the last
// answer is reused (reuse.ts). It runs in a process of its own (graphics-probe.ts), so
// systeminformation never enters the daemon's memory. The gpu and display providers share
// the call. The mappings to RawDevice are pure and tested.
import { promises as fs } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Systeminformation } from "systeminformation";
import type { RawDevice } from "../device.js";
import { runTool } from "./find-command.js";
import type { DeviceProvider, ScanOptions } from "./provider.js";
import { reuseWhileUnchanged } from "./reuse.js";

type Graphics = Systeminformation.GraphicsData;
type Controller = Systeminformation.GraphicsControllerData;
type Display = Systeminformation.GraphicsDisplayData;

/** How long a graphics answer is reused at most when nothing says it changed (and where nothing can say so). */
export const GRAPHICS_MAX_AGE_MS = 10 * 60_000;
export const SYSFS_DRM = "/sys/class/drm";

/**
 * Linux: the DRM devices (cards and their connectors, which come and go with GPUs and with
 * outputs) and each connector's status ("connected"/"disconnected", which changes when a
 * display is plugged in). A few directory entries and small files, no process. Null where
 * there is no such signal (other platforms, no /sys/class/drm).
 */
export async function readGraphicsSignal(root = SYSFS_DRM, platform = process.platform): Promise<string | null> {
  if (platform !== "linux") return null;
  try {
    const names = (await fs.readdir(root)).sort();
    const statuses = await Promise.all(
      names.map((name) =>
        name.includes("-")
          ? fs.readFile(path.join(root, name, "status"), "utf8").then(
              (status) => `${name}=${status.trim()}`,
              () => name,
            )
          : name,
      ),
    );
    return statuses.join(",");
  } catch {
    return null;
  }
}

/** The gpu and display providers of one inventory, sharing one si.graphics() call and its reuse. */
export function createGraphicsProviders(
  readSignal: () => Promise<string | null> = () => readGraphicsSignal(),
  readGraphics: (options: ScanOptions) => Promise<Graphics> = probeGraphics,
): { gpu: DeviceProvider; display: DeviceProvider } {
  const graphics = reuseWhileUnchanged(readSignal, readGraphics, GRAPHICS_MAX_AGE_MS);
  return {
    gpu: { name: "gpu", scan: async (options) => toGpuDevices((await graphics(options)).controllers) },
    display: { name: "display", scan: async (options) => toDisplayDevices((await graphics(options)).displays) },
  };
}

const GRAPHICS_PROBE = fileURLToPath(new URL("./graphics-probe.js", import.meta.url));

/** si.graphics() in a process of its own (graphics-probe.ts), killed at the scan's timeout. */
async function probeGraphics({ timeoutMs }: ScanOptions): Promise<Graphics> {
  return JSON.parse(await runTool(process.execPath, [GRAPHICS_PROBE], { timeoutMs })) as Graphics;
}

/**
 * Identity and capacity only: utilization, temperatures, used memory, fan, power and clocks
 * change every scan and would make every GPU a "changed" row every time.
 */
export function toGpuDevices(controllers: readonly Controller[]): RawDevice[] {
  return controllers.map((gpu, index) => {
    const bus = gpu.busAddress || gpu.pciBus;
    const fallback = `${gpu.vendorId || gpu.vendor || "gpu"}-${gpu.deviceId || gpu.model || "unknown"}-${index}`;
    return {
      id: `gpu:${bus || fallback}`,
      kind: "gpu",
      name: gpu.name || gpu.model || gpu.vendor || `GPU ${index}`,
      state: "online",
      attributes: {
        vendor: gpu.vendor || undefined,
        model: gpu.model || undefined,
        vendorId: gpu.vendorId || undefined,
        deviceId: gpu.deviceId || undefined,
        bus: gpu.bus || undefined,
        busAddress: bus || undefined,
        vramMb: gpu.vram ?? undefined,
        vramDynamic: gpu.vramDynamic,
        memoryTotalMb: gpu.memoryTotal,
        driverVersion: gpu.driverVersion || undefined,
        cores: gpu.cores,
        metalVersion: gpu.metalVersion || undefined,
        external: gpu.external,
      },
    };
  });
}

export function toDisplayDevices(displays: readonly Display[]): RawDevice[] {
  return displays.map((display, index) => {
    const serial = display.serial && display.serial !== "0" ? display.serial : null;
    const key = serial
      ? `${display.vendor || display.vendorId || "display"}-${display.model}-${serial}`
      : display.displayId ||
        display.deviceName ||
        `${display.vendor || "display"}-${display.model || "unknown"}-${index}`;
    const size = (x: number | null, y: number | null) => (x && y ? `${x}x${y}` : undefined);
    return {
      id: `display:${key}`,
      kind: "display",
      name: display.model || display.deviceName || `Display ${index}`,
      state: "online",
      attributes: {
        vendor: display.vendor || undefined,
        model: display.model || undefined,
        serial: serial ?? undefined,
        main: display.main,
        builtin: display.builtin,
        connection: display.connection ?? undefined,
        resolution: size(display.resolutionX, display.resolutionY),
        currentResolution: size(display.currentResX, display.currentResY),
        refreshRate: display.currentRefreshRate ?? undefined,
      },
    };
  });
}
