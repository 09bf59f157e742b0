// The device inventory: providers, the diff, the sync session and its host. The daemon needs
// only createDeviceSync; `runner devices` uses scanDevices with createProviders.
export {
  createDeviceSync,
  type DeviceSync,
  type DeviceSyncOptions,
  type DeviceSyncSettings,
  type DeviceSyncStatus,
} from "./sync-host.js";
export { scanDevices, type ScanResult, type ProviderReport } from "./scan.js";
export { createProviders, type DeviceProvider } from "./providers/index.js";
export { DEVICE_PROVIDER_NAMES, type DeviceProviderName } from "./provider-names.js";
export type { Device, RawDevice } from "./device.js";
