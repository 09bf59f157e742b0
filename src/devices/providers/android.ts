// Android devices and emulators through `adb devices -l`, when adb is on PATH. The parser is
// pure and tested on captured output.
import type { DeviceState, RawDevice } from "../device.js";
import { findOnPath, runTool } from "./find-command.js";
import type { DeviceProvider } from "./provider.js";

export const androidProvider: DeviceProvider = {
  name: "android",
  async scan({ timeoutMs }) {
    const adb = await findOnPath("adb");
    if (!adb) return [];
    // The first call may start adb's server (it then prints "* daemon started" lines, which the parser skips).
    return parseAdbDevices(await runTool(adb, ["devices", "-l"], { timeoutMs }));
  },
};

/** `key:value` words that follow the state in `adb devices -l`. */
const PROPERTY = /^(usb|product|model|device|transport_id|features):/;

/**
 * One device per line: the serial, the state (one word, except "no permissions (...)"), then
 * `key:value` properties. transport_id is left out: it changes each time the device reconnects.
 */
export function parseAdbDevices(output: string): RawDevice[] {
  const devices: RawDevice[] = [];
  for (const raw of output.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith("*") || line.startsWith("List of devices") || line.startsWith("adb ")) continue;
    const [serial, ...words] = line.split(/\s+/);
    if (!serial || words.length === 0) continue;
    const firstProperty = words.findIndex((word) => PROPERTY.test(word));
    const stateWords = firstProperty === -1 ? words : words.slice(0, firstProperty);
    const properties = Object.fromEntries(
      (firstProperty === -1 ? [] : words.slice(firstProperty))
        .filter((w) => PROPERTY.test(w))
        .map((w) => [w.slice(0, w.indexOf(":")), w.slice(w.indexOf(":") + 1)]),
    );
    const adbState = stateWords.join(" ").startsWith("no permissions") ? "no permissions" : stateWords.join(" ");
    const model = properties.model?.replace(/_/g, " ");
    devices.push({
      id: `android:${serial}`,
      kind: "android",
      name: model || serial,
      state: toDeviceState(adbState),
      attributes: {
        serial,
        adbState,
        model: properties.model,
        product: properties.product,
        device: properties.device,
        usb: properties.usb,
        emulator: serial.startsWith("emulator-"),
        transport: transportOf(serial, properties.usb),
      },
    });
  }
  return devices;
}

function toDeviceState(adbState: string): DeviceState {
  if (adbState === "device") return "online";
  if (adbState === "offline") return "offline";
  // unauthorized, authorizing, connecting, no permissions, recovery, sideload, bootloader...: there, but not usable.
  return "unavailable";
}

function transportOf(serial: string, usb: string | undefined): string {
  if (serial.startsWith("emulator-")) return "emulator";
  if (usb) return "usb";
  return serial.includes(":") || serial.includes("._adb-tls-connect.") ? "tcp" : "usb";
}
