// USB devices, read the cheapest way each platform offers: on Linux from sysfs
// (/sys/bus/usb/devices, a few small file reads, no process), on macOS from
// `/usr/sbin/ioreg -p IOUSB -l -a` (one process, plist output), elsewhere from
// systeminformation. Hubs are left out: a job never needs one.
//
// A device's id must survive a replug: vendor:product + its serial when it has one (the bus
// address changes on every replug, so it is never part of an id); a device without a serial
// is named by the port it is plugged into (Linux's port path "1-1.2", macOS's locationID),
// which is stable while it stays in that port. The mappings are pure and tested.
import { promises as fs } from "node:fs";
import path from "node:path";
import type { Systeminformation } from "systeminformation";
import type { RawDevice } from "../device.js";
import { runTool, SYSTEM_TOOLS } from "./find-command.js";
import { parsePlist, type PlistValue } from "./plist.js";
import type { DeviceProvider } from "./provider.js";

/** One USB device as read from the platform, before it becomes a row. */
export interface UsbRecord {
  /** Four hex digits, lower case ("0403"); empty when unknown. */
  vendorId: string;
  productId: string;
  serial?: string;
  /** The device's product string. */
  name?: string;
  /** The device's manufacturer string. */
  manufacturer?: string;
  /** The USB class of the device (or of its first interface), as a word: "Hub", "Storage"... */
  type?: string;
  /** Where it is plugged in, stable while it stays in that port: "1-1.2" (Linux), "0x14200000" (macOS). */
  port?: string;
  bus?: number;
  /** The bus address: changes on every replug; an attribute, never part of the id. */
  address?: number;
  removable?: boolean;
  maxPower?: string;
  speed?: string;
}

export const SYSFS_USB_DEVICES = "/sys/bus/usb/devices";

export const usbProvider: DeviceProvider = {
  name: "usb",
  async scan({ timeoutMs }) {
    if (process.platform === "linux") return toUsbDevices(await readSysfsUsb(SYSFS_USB_DEVICES));
    if (process.platform === "darwin") return toUsbDevices(await readIoregUsb(SYSTEM_TOOLS.ioreg, timeoutMs));
    // Imported here: Linux and macOS never load it.
    const { default: si } = await import("systeminformation");
    return toUsbDevices(fromSystemInformation(await si.usb()));
  },
};

/** Hubs (class 9, and anything that calls itself a root hub) are never rows. */
export function toUsbDevices(records: readonly UsbRecord[]): RawDevice[] {
  return records
    .filter((usb) => usb.type !== "Hub" && !/\broot hub\b/i.test(usb.name ?? ""))
    .map((usb) => {
      const vendorProduct = usb.vendorId || usb.productId ? `${usb.vendorId}:${usb.productId}` : "unknown";
      const serial = usb.serial?.trim() || undefined;
      const where = usb.port ?? `${usb.bus ?? "?"}-${usb.address ?? "?"}`;
      return {
        id: serial ? `usb:${vendorProduct}:${serial}` : `usb:${vendorProduct}@${where}`,
        kind: "usb",
        name: usb.name || usb.manufacturer || vendorProduct,
        state: "online",
        attributes: {
          vendorProduct,
          manufacturer: usb.manufacturer || undefined,
          type: usb.type || undefined,
          serial,
          port: usb.port,
          bus: usb.bus,
          address: usb.address,
          removable: usb.removable,
          maxPower: usb.maxPower || undefined,
          speed: usb.speed || undefined,
        },
      };
    });
}

// ---- Linux: sysfs ----

/** USB class codes (bDeviceClass, else the first interface's bInterfaceClass) as the words rows carry. */
const USB_CLASSES: Record<string, string> = {
  "01": "Audio",
  "02": "Communications",
  "03": "HID",
  "06": "Image",
  "07": "Printer",
  "08": "Storage",
  "09": "Hub",
  "0a": "Communications",
  "0b": "Smart Card",
  "0e": "Camera",
  e0: "Wireless",
  ff: "Vendor Specific",
};

/**
 * Every device under `root` ("1-1", "1-1.2", "usb1"; interfaces such as "1-1:1.0" are read only
 * for the class). Attribute files the kernel leaves out (serial, product...) are just absent;
 * a device unplugged while it is read is left out.
 */
export async function readSysfsUsb(root: string): Promise<UsbRecord[]> {
  let names: string[];
  try {
    names = await fs.readdir(root);
  } catch (error) {
    // No USB bus at all (a container, a VM without one): no devices, not a failure.
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
  const entries = names.filter((name) => !name.includes(":")).sort();
  const records = await Promise.all(entries.map((name) => readSysfsDevice(root, name)));
  return records.filter((record): record is UsbRecord => record !== null);
}

async function readSysfsDevice(root: string, name: string): Promise<UsbRecord | null> {
  const dir = path.join(root, name);
  const read = (file: string, under = dir) =>
    fs.readFile(path.join(under, file), "utf8").then(
      (text) => text.trim() || undefined,
      () => undefined,
    );
  const [vendorId, productId, serial, product, manufacturer, busnum, devnum, deviceClass, removable, maxPower, speed] =
    await Promise.all(
      [
        "idVendor",
        "idProduct",
        "serial",
        "product",
        "manufacturer",
        "busnum",
        "devnum",
        "bDeviceClass",
        "removable",
        "bMaxPower",
        "speed",
      ].map((file) => read(file)),
    );
  if (vendorId === undefined || productId === undefined) return null;
  // Class 00: each interface says what it is; the first one names the device.
  const classCode = deviceClass === "00" ? await read("bInterfaceClass", path.join(root, `${name}:1.0`)) : deviceClass;
  return {
    vendorId: vendorId.toLowerCase(),
    productId: productId.toLowerCase(),
    serial,
    name: product,
    manufacturer,
    type: classCode === undefined ? undefined : (USB_CLASSES[classCode.toLowerCase()] ?? `class ${classCode}`),
    // "usb1" is bus 1's root hub; a device's own name is its port path.
    port: name.startsWith("usb") ? undefined : name,
    bus: toInteger(busnum),
    address: toInteger(devnum),
    removable: removable === "removable" ? true : removable === "fixed" ? false : undefined,
    maxPower,
    speed: speed === undefined ? undefined : `${speed} Mb/s`,
  };
}

function toInteger(text: string | undefined): number | undefined {
  const value = text === undefined ? Number.NaN : Number.parseInt(text, 10);
  return Number.isFinite(value) ? value : undefined;
}

// ---- macOS: ioreg ----

export async function readIoregUsb(ioreg: string, timeoutMs: number): Promise<UsbRecord[]> {
  return parseIoregUsb(await runTool(ioreg, ["-p", "IOUSB", "-l", "-a"], { timeoutMs }));
}

/**
 * The devices in `ioreg -p IOUSB -l -a` (an XML plist of the IOUSB plane: the root, then each
 * controller's root hub, hubs and devices nested in IORegistryEntryChildren). A device is an
 * entry with idVendor and idProduct; the USB strings are read under both their current names
 * (kUSB…String) and the older ones ("USB Serial Number"...).
 */
export function parseIoregUsb(xml: string): UsbRecord[] {
  const records: UsbRecord[] = [];
  const visit = (value: PlistValue | undefined): void => {
    if (Array.isArray(value)) return value.forEach(visit);
    if (value === undefined || typeof value !== "object") return;
    const vendor = value.idVendor;
    const product = value.idProduct;
    if (typeof vendor === "number" && typeof product === "number") {
      const text = (...keys: string[]) => {
        for (const key of keys) {
          const found = value[key];
          if (typeof found === "string" && found.trim() !== "") return found.trim();
        }
        return undefined;
      };
      const number = (key: string) => (typeof value[key] === "number" ? value[key] : undefined);
      const locationId = number("locationID");
      const deviceClass = number("bDeviceClass");
      const nonRemovable = text("non-removable");
      records.push({
        vendorId: hex4(vendor),
        productId: hex4(product),
        serial: text("kUSBSerialNumberString", "USB Serial Number"),
        name: text("kUSBProductString", "USB Product Name", "IORegistryEntryName"),
        manufacturer: text("kUSBVendorString", "USB Vendor Name"),
        type:
          deviceClass === undefined ? undefined : (USB_CLASSES[deviceClass.toString(16).padStart(2, "0")] ?? undefined),
        port: locationId === undefined ? undefined : `0x${locationId.toString(16).padStart(8, "0")}`,
        address: number("USB Address"),
        removable: nonRemovable === "yes" ? false : nonRemovable === "no" ? true : undefined,
        speed: IOREG_SPEEDS[number("Device Speed") ?? -1],
      });
    }
    visit(value.IORegistryEntryChildren);
  };
  visit(parsePlist(xml));
  return records;
}

/** IOUSBHostFamily's "Device Speed" values. */
const IOREG_SPEEDS: Record<number, string> = {
  0: "1.5 Mb/s",
  1: "12 Mb/s",
  2: "480 Mb/s",
  3: "5000 Mb/s",
  4: "10000 Mb/s",
};

function hex4(value: number): string {
  return value.toString(16).padStart(4, "0");
}

// ---- elsewhere: systeminformation ----

/** systeminformation's `id` is "vvvv:pppp" where it knows both; its deviceId is a bus address. */
export function fromSystemInformation(devices: readonly Systeminformation.UsbData[]): UsbRecord[] {
  return devices.map((usb) => {
    const [vendorId = "", productId = ""] = String(usb.id ?? "").split(":");
    return {
      vendorId: vendorId.toLowerCase(),
      productId: productId.toLowerCase(),
      serial: usb.serialNumber?.trim() || undefined,
      name: usb.name || usb.vendor || undefined,
      manufacturer: usb.manufacturer || undefined,
      type: usb.type || undefined,
      bus: usb.bus ?? undefined,
      address: usb.deviceId ?? undefined,
      removable: usb.removable ?? undefined,
      maxPower: usb.maxPower || undefined,
    };
  });
}
