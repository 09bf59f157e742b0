// The providers by name, in the order the `deviceProviders` setting may list them.
import type { DeviceProviderName } from "../provider-names.js";
import { androidProvider } from "./android.js";
import { createGraphicsProviders } from "./graphics.js";
import { createIosSimulatorProvider } from "./ios-simulator.js";
import type { DeviceProvider } from "./provider.js";
import { usbProvider } from "./usb.js";

export type { DeviceProvider, ScanOptions } from "./provider.js";

/** Fresh providers for one inventory: graphics and simulators keep their last answers between its scans. */
export function createProviders(names: readonly DeviceProviderName[]): DeviceProvider[] {
  const graphics = createGraphicsProviders();
  const providers: Record<DeviceProviderName, DeviceProvider> = {
    gpu: graphics.gpu,
    usb: usbProvider,
    display: graphics.display,
    android: androidProvider,
    "ios-simulator": createIosSimulatorProvider(),
  };
  return [...new Set(names)].map((name) => providers[name]);
}
