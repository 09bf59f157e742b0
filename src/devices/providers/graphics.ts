// GPUs and displays, both from one `si.graphics()` call (it runs lspci, nvidia-smi, xrandr or
// system_profiler, depending on the platform). The gpu and display providers run side by
// side in a scan and share the call. The mappings to RawDevice are pure and tested.
import type { Systeminformation } from "systeminformation";
import type { RawDevice } from "../device.js";
import type { DeviceProvider } from "./provider.js";

type Graphics = Systeminformation.GraphicsData;
type Controller = Systeminformation.GraphicsControllerData;
type Display = Systeminformation.GraphicsDisplayData;

let pending: Promise<Graphics> | null = null;

/** One si.graphics() at a time: callers while it runs share its answer. */
function readGraphics(): Promise<Graphics> {
  pending ??= loadSystemInformation()
    .then((si) => si.graphics())
    .finally(() => {
      pending = null;
    });
  return pending;
}

/** Loaded on the first scan that needs it (about 11 MB): a runner with these providers off never pays for it. */
export async function loadSystemInformation(): Promise<typeof import("systeminformation")> {
  return (await import("systeminformation")).default;
}

export const gpuProvider: DeviceProvider = {
  name: "gpu",
  scan: async () => toGpuDevices((await readGraphics()).controllers),
};

export const displayProvider: DeviceProvider = {
  name: "display",
  scan: async () => toDisplayDevices((await readGraphics()).displays),
};

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
