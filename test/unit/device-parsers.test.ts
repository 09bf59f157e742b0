// The providers' parsers and mappings on captured output: adb, simctl, and systeminformation's
// graphics and usb answers. Pure functions; no adb, Xcode or GPU needed.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import type { Systeminformation } from "systeminformation";
import { parseAdbDevices } from "../../src/devices/providers/android.js";
import { describeRuntime, parseSimctlList } from "../../src/devices/providers/ios-simulator.js";
import { toDisplayDevices, toGpuDevices } from "../../src/devices/providers/graphics.js";
import { fromSystemInformation, toUsbDevices } from "../../src/devices/providers/usb.js";
import { toDevice } from "../../src/devices/device.js";

// `adb devices -l` on a machine whose adb server was not running, with one of each kind of line.
const ADB_OUTPUT = [
  "* daemon not running; starting now at tcp:5037",
  "* daemon started successfully",
  "List of devices attached",
  "emulator-5554          device product:sdk_gphone64_x86_64 model:sdk_gphone64_x86_64 device:emu64xa transport_id:1",
  "R58M32ABCDE            device usb:1-1.2 product:beyond1ltexx model:SM_G973F device:beyond1 transport_id:3",
  "0A071FDD4003ZG         unauthorized usb:1-1.3 transport_id:4",
  "192.168.1.42:5555      offline product:redfin model:Pixel_5 device:redfin transport_id:5",
  "HT7A1234567            no permissions (missing udev rules? user is in the plugdev group); see [http://developer.android.com/tools/device.html] usb:1-1.4 transport_id:6",
  "adb-2C151FDH2004NP-vXkp1B._adb-tls-connect._tcp\tdevice product:oriole model:Pixel_6 device:oriole transport_id:7",
  "",
].join("\n");

// `xcrun simctl list -j devices` (Xcode 15), trimmed: two iOS runtimes, a watchOS one, one unavailable simulator.
const SIMCTL_OUTPUT = JSON.stringify({
  devices: {
    "com.apple.CoreSimulator.SimRuntime.iOS-17-2": [
      {
        lastBootedAt: "2024-01-10T09:12:44Z",
        dataPath: "/Users/ci/Library/Developer/CoreSimulator/Devices/8A1C2F3E-0B6D-4E8F-9A51-3C7D2E1F0A9B/data",
        dataPathSize: 1_234_567,
        logPath: "/Users/ci/Library/Logs/CoreSimulator/8A1C2F3E-0B6D-4E8F-9A51-3C7D2E1F0A9B",
        udid: "8A1C2F3E-0B6D-4E8F-9A51-3C7D2E1F0A9B",
        isAvailable: true,
        deviceTypeIdentifier: "com.apple.CoreSimulator.SimDeviceType.iPhone-15",
        state: "Booted",
        name: "iPhone 15",
      },
      {
        dataPath: "/Users/ci/Library/Developer/CoreSimulator/Devices/1F2E3D4C-5B6A-4789-8A9B-0C1D2E3F4A5B/data",
        udid: "1F2E3D4C-5B6A-4789-8A9B-0C1D2E3F4A5B",
        isAvailable: true,
        deviceTypeIdentifier: "com.apple.CoreSimulator.SimDeviceType.iPad-Pro-11-inch-4th-generation-8GB",
        state: "Shutdown",
        name: "iPad Pro (11-inch) (4th generation)",
      },
    ],
    "com.apple.CoreSimulator.SimRuntime.iOS-16-4": [
      {
        availabilityError: 'runtime profile not found using "System" match policy',
        udid: "C0FFEE00-1111-4222-8333-444455556666",
        isAvailable: false,
        deviceTypeIdentifier: "com.apple.CoreSimulator.SimDeviceType.iPhone-14",
        state: "Shutdown",
        name: "iPhone 14",
      },
    ],
    "com.apple.CoreSimulator.SimRuntime.watchOS-10-2": [
      {
        udid: "DEADBEEF-0000-4000-8000-000000000001",
        isAvailable: true,
        state: "Shutdown",
        name: "Apple Watch Series 9 (45mm)",
      },
    ],
  },
});

describe("adb devices -l", () => {
  const devices = parseAdbDevices(ADB_OUTPUT);
  const byId = new Map(devices.map((d) => [d.id, d]));

  test("one device per device line; banner and daemon lines are skipped", () => {
    assert.deepEqual(
      devices.map((d) => d.id),
      [
        "android:emulator-5554",
        "android:R58M32ABCDE",
        "android:0A071FDD4003ZG",
        "android:192.168.1.42:5555",
        "android:HT7A1234567",
        "android:adb-2C151FDH2004NP-vXkp1B._adb-tls-connect._tcp",
      ],
    );
  });

  test("adb states map to online, offline and unavailable", () => {
    assert.deepEqual(
      devices.map((d) => d.state),
      ["online", "online", "unavailable", "offline", "unavailable", "online"],
    );
    assert.equal(byId.get("android:HT7A1234567")?.attributes.adbState, "no permissions");
    assert.equal(byId.get("android:0A071FDD4003ZG")?.attributes.adbState, "unauthorized");
  });

  test("properties become attributes; the transport id, which changes on every reconnect, does not", () => {
    const phone = byId.get("android:R58M32ABCDE")!;
    assert.equal(phone.name, "SM G973F");
    assert.equal(phone.kind, "android");
    assert.deepEqual(
      {
        model: phone.attributes.model,
        product: phone.attributes.product,
        usb: phone.attributes.usb,
        transport: phone.attributes.transport,
        emulator: phone.attributes.emulator,
      },
      { model: "SM_G973F", product: "beyond1ltexx", usb: "1-1.2", transport: "usb", emulator: false },
    );
    for (const device of devices)
      assert.ok(!("transport_id" in device.attributes) && !("transportId" in device.attributes));
    assert.equal(byId.get("android:emulator-5554")?.attributes.emulator, true);
    assert.equal(byId.get("android:192.168.1.42:5555")?.attributes.transport, "tcp");
    assert.equal(byId.get("android:adb-2C151FDH2004NP-vXkp1B._adb-tls-connect._tcp")?.attributes.transport, "tcp");
  });

  test("the same devices after a replug (new transport ids) have the same fingerprints", () => {
    const replugged = parseAdbDevices(
      ADB_OUTPUT.replace(/transport_id:(\d)/g, (_m, n: string) => `transport_id:${Number(n) + 10}`),
    );
    assert.deepEqual(
      replugged.map((d) => toDevice(d).fingerprint),
      devices.map((d) => toDevice(d).fingerprint),
    );
  });

  test("no devices, or only adb's banner, is an empty list", () => {
    assert.deepEqual(parseAdbDevices("List of devices attached\n\n"), []);
    assert.deepEqual(parseAdbDevices(""), []);
  });
});

describe("xcrun simctl list -j devices", () => {
  const devices = parseSimctlList(SIMCTL_OUTPUT);

  test("iOS simulators only, with their runtime; an unavailable one is 'unavailable'", () => {
    assert.deepEqual(
      devices.map((d) => [d.id, d.name, d.state, d.attributes.runtime]),
      [
        ["ios-sim:8A1C2F3E-0B6D-4E8F-9A51-3C7D2E1F0A9B", "iPhone 15", "online", "iOS 17.2"],
        ["ios-sim:1F2E3D4C-5B6A-4789-8A9B-0C1D2E3F4A5B", "iPad Pro (11-inch) (4th generation)", "online", "iOS 17.2"],
        ["ios-sim:C0FFEE00-1111-4222-8333-444455556666", "iPhone 14", "unavailable", "iOS 16.4"],
      ],
    );
    assert.equal(devices[0]!.attributes.simState, "Booted");
    assert.equal(devices[0]!.attributes.deviceType, "iPhone-15");
    assert.ok(
      !("dataPath" in devices[0]!.attributes) && !("lastBootedAt" in devices[0]!.attributes),
      "paths and boot times stay out",
    );
  });

  test("the format of Xcode before 10.1 (runtime names, 'availability') is understood", () => {
    const old = JSON.stringify({
      devices: {
        "iOS 12.1": [
          {
            state: "Shutdown",
            availability: "(available)",
            name: "iPhone XR",
            udid: "11111111-2222-4333-8444-555555555555",
          },
          {
            state: "Shutdown",
            availability: "(unavailable, runtime profile not found)",
            name: "iPhone X",
            udid: "66666666-7777-4888-8999-000000000000",
          },
        ],
      },
    });
    assert.deepEqual(
      parseSimctlList(old).map((d) => [d.name, d.state, d.attributes.osVersion]),
      [
        ["iPhone XR", "online", "12.1"],
        ["iPhone X", "unavailable", "12.1"],
      ],
    );
  });

  test("output that is not simctl's JSON is an error (the provider fails, its rows are kept stale)", () => {
    assert.throws(() => parseSimctlList('xcrun: error: unable to find utility "simctl"'));
    assert.throws(() => parseSimctlList(JSON.stringify({ runtimes: [] })));
  });

  test("runtime keys", () => {
    assert.deepEqual(describeRuntime("com.apple.CoreSimulator.SimRuntime.iOS-17-2"), {
      platform: "iOS",
      version: "17.2",
      label: "iOS 17.2",
    });
    assert.deepEqual(describeRuntime("com.apple.CoreSimulator.SimRuntime.xrOS-1-0"), {
      platform: "xrOS",
      version: "1.0",
      label: "xrOS 1.0",
    });
    assert.deepEqual(describeRuntime("iOS 12.1"), { platform: "iOS", version: "12.1", label: "iOS 12.1" });
  });
});

describe("systeminformation answers", () => {
  // si.graphics() on a Linux box with an NVIDIA card (nvidia-smi present) and one monitor.
  const nvidia: Systeminformation.GraphicsControllerData = {
    vendor: "NVIDIA Corporation",
    model: "GA102 [GeForce RTX 3090]",
    bus: "PCI",
    busAddress: "01:00.0",
    vram: 24576,
    vramDynamic: false,
    pciBus: "00000000:01:00.0",
    driverVersion: "535.129.03",
    name: "NVIDIA GeForce RTX 3090",
    subDeviceId: "0x147D10DE",
    memoryTotal: 24576,
    memoryUsed: 1021,
    memoryFree: 23555,
    utilizationGpu: 3,
    utilizationMemory: 1,
    temperatureGpu: 41,
    fanSpeed: 30,
    powerDraw: 28.47,
    powerLimit: 350,
    clockCore: 210,
    clockMemory: 405,
  };
  const monitor: Systeminformation.GraphicsDisplayData = {
    vendor: "DEL",
    vendorId: "4268",
    model: "DELL U2720Q",
    productionYear: 2021,
    serial: "F3ABC23",
    deviceName: "DP-1",
    displayId: "1",
    main: true,
    builtin: false,
    connection: "DP",
    sizeX: 600,
    sizeY: 340,
    pixelDepth: 24,
    resolutionX: 3840,
    resolutionY: 2160,
    currentResX: 3840,
    currentResY: 2160,
    positionX: 0,
    positionY: 0,
    currentRefreshRate: 60,
  };

  test("a GPU keeps its identity and capacity; load, temperature and clocks stay out of its fingerprint", () => {
    const [gpu] = toGpuDevices([nvidia]);
    assert.equal(gpu!.id, "gpu:01:00.0");
    assert.equal(gpu!.name, "NVIDIA GeForce RTX 3090");
    assert.equal(gpu!.attributes.vramMb, 24576);
    assert.equal(gpu!.attributes.driverVersion, "535.129.03");
    const busy = toGpuDevices([
      {
        ...nvidia,
        utilizationGpu: 99,
        temperatureGpu: 83,
        memoryUsed: 20_000,
        memoryFree: 4576,
        clockCore: 1900,
        fanSpeed: 80,
        powerDraw: 340,
      },
    ]);
    assert.equal(toDevice(busy[0]!).fingerprint, toDevice(gpu!).fingerprint);
    assert.notEqual(
      toDevice(toGpuDevices([{ ...nvidia, driverVersion: "545.23.06" }])[0]!).fingerprint,
      toDevice(gpu!).fingerprint,
      "a new driver is a change",
    );
  });

  test("a GPU without a bus address (macOS) gets an id from vendor, model and position", () => {
    const [apple] = toGpuDevices([
      {
        vendor: "Apple",
        model: "Apple M2 Pro",
        bus: "Built-In",
        vram: null,
        vramDynamic: true,
        cores: 19,
        metalVersion: "Metal 3",
      },
    ]);
    assert.equal(apple!.id, "gpu:Apple-Apple M2 Pro-0");
    assert.equal(toDevice(apple!).id, "gpu:Apple-Apple_M2_Pro-0");
    assert.equal(apple!.attributes.cores, 19);
  });

  test("a display is identified by vendor, model and serial", () => {
    const [display] = toDisplayDevices([monitor]);
    assert.equal(display!.id, "display:DEL-DELL U2720Q-F3ABC23");
    assert.equal(display!.attributes.resolution, "3840x2160");
    assert.equal(display!.attributes.main, true);
    const [noSerial] = toDisplayDevices([{ ...monitor, serial: null }]);
    assert.equal(noSerial!.id, "display:1");
  });

  test("USB (systeminformation, used where neither sysfs nor ioreg is): hubs are left out; a serial gives a stable id, else the bus address", () => {
    const usb: Systeminformation.UsbData[] = [
      {
        id: "1d6b:0002",
        bus: 1,
        deviceId: 1,
        name: "2.0 root hub",
        type: "Hub",
        removable: false,
        vendor: "Linux Foundation",
        manufacturer: "Linux 6.1.0 xhci-hcd",
        maxPower: "0mA",
        serialNumber: "0000:00:14.0",
      },
      {
        id: "18d1:4ee7",
        bus: 1,
        deviceId: 7,
        name: "Pixel 6",
        type: "",
        removable: false,
        vendor: "Google Inc.",
        manufacturer: "Google",
        maxPower: "500mA",
        serialNumber: "2C151FDH2004NP",
      },
      {
        id: "0403:6001",
        bus: 3,
        deviceId: 4,
        name: "FT232 Serial (UART) IC",
        type: "",
        removable: false,
        vendor: "Future Technology Devices International, Ltd",
        manufacturer: "FTDI",
        maxPower: "90mA",
        serialNumber: "",
      },
    ];
    const devices = toUsbDevices(fromSystemInformation(usb));
    assert.deepEqual(
      devices.map((d) => d.id),
      ["usb:18d1:4ee7:2C151FDH2004NP", "usb:0403:6001@3-4"],
    );
    assert.equal(devices[0]!.attributes.manufacturer, "Google");
    assert.equal(devices[1]!.name, "FT232 Serial (UART) IC");
  });
});
