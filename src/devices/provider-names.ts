// The device providers a runner can run, by name (the `deviceProviders` setting lists some of
// them). Kept apart from the providers themselves so the settings table can name them
// without loading systeminformation.
export const DEVICE_PROVIDER_NAMES = ["gpu", "usb", "display", "android", "ios-simulator"] as const;
export type DeviceProviderName = (typeof DEVICE_PROVIDER_NAMES)[number];
