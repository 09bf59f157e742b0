// The providers by name, in the order the `deviceProviders` setting may list them.
import type { DeviceProviderName } from "../provider-names.js";
import { androidProvider } from "./android.js";
import { displayProvider, gpuProvider } from "./graphics.js";
import { iosSimulatorProvider } from "./ios-simulator.js";
import type { DeviceProvider } from "./provider.js";
import { usbProvider } from "./usb.js";

export type { DeviceProvider, ScanOptions } from "./provider.js";

const PROVIDERS: Record<DeviceProviderName, DeviceProvider> = {
  gpu: gpuProvider,
  usb: usbProvider,
  display: displayProvider,
  android: androidProvider,
  "ios-simulator": iosSimulatorProvider,
};

export function createProviders(names: readonly DeviceProviderName[]): DeviceProvider[] {
  return [...new Set(names)].map((name) => PROVIDERS[name]);
}
