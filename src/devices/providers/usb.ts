// USB devices from `si.usb()` (lsusb -v on Linux, ioreg on macOS). Hubs are left out: a job
// never needs one. The mapping to RawDevice is pure and tested.
import type { Systeminformation } from "systeminformation";
import type { RawDevice } from "../device.js";
import { loadSystemInformation } from "./graphics.js";
import type { DeviceProvider } from "./provider.js";

type Usb = Systeminformation.UsbData;

export const usbProvider: DeviceProvider = {
  name: "usb",
  scan: async () => toUsbDevices(await (await loadSystemInformation()).usb()),
};

/** The id is vendor:product + serial when the device has a serial, else its bus path (which changes when it is replugged elsewhere). */
export function toUsbDevices(devices: readonly Usb[]): RawDevice[] {
  return devices
    .filter((usb) => usb.type !== "Hub" && !/\broot hub\b/i.test(usb.name ?? ""))
    .map((usb) => {
      const serial = (usb.serialNumber ?? "").trim();
      const product = String(usb.id ?? "");
      return {
        id: serial ? `usb:${product}:${serial}` : `usb:${usb.bus ?? "?"}-${usb.deviceId ?? "?"}:${product}`,
        kind: "usb",
        name: usb.name || usb.manufacturer || product || "USB device",
        state: "online",
        attributes: {
          vendorProduct: product || undefined,
          vendor: usb.vendor || undefined,
          manufacturer: usb.manufacturer || undefined,
          type: usb.type || undefined,
          serial: serial || undefined,
          bus: usb.bus ?? undefined,
          address: usb.deviceId ?? undefined,
          removable: usb.removable ?? undefined,
          maxPower: usb.maxPower || undefined,
        },
      };
    });
}
