// The device providers' drivers against real processes and files: ioreg replaced at the
// process boundary by a stub program that records its arguments and replays a captured answer
// (test/fixtures/ioreg-usb.plist), and sysfs trees laid out in a temp dir as the kernel lays
// out /sys/bus/usb/devices and /sys/class/drm.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { readIoregUsb, readSysfsUsb, toUsbDevices } from "../../src/devices/providers/usb.js";
import { createGraphicsProviders, readGraphicsSignal } from "../../src/devices/providers/graphics.js";
import { readSimulatorsSignal } from "../../src/devices/providers/ios-simulator.js";
import { REPO_ROOT } from "../helpers/cli.js";
import { tempDir } from "../helpers/fixtures.js";

const TIMEOUT = { timeout: 15_000 };
const FIXTURE = path.join(REPO_ROOT, "test", "fixtures", "ioreg-usb.plist");

async function stub(dir: string, name: string, body: string): Promise<string> {
  const file = path.join(dir, name);
  await fs.writeFile(file, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return file;
}

describe("ioreg, stubbed at the process boundary", { skip: process.platform === "win32" }, () => {
  test("the provider asks for the IOUSB plane as a plist and reads the devices from the answer", TIMEOUT, async (t) => {
    const dir = await tempDir(t);
    const ioreg = await stub(dir, "ioreg", `printf '%s\\n' "$@" > "${dir}/args"\ncat "${FIXTURE}"`);
    const rows = toUsbDevices(await readIoregUsb(ioreg, 5_000));
    assert.deepEqual((await fs.readFile(path.join(dir, "args"), "utf8")).trim().split("\n"), [
      "-p",
      "IOUSB",
      "-l",
      "-a",
    ]);
    assert.deepEqual(
      rows.map((r) => r.id),
      ["usb:0403:6001:A50285BI", "usb:0403:6001:A9GQ3YVN", "usb:1a86:7523@0x01130000", "usb:05ac:0342@0x02100000"],
    );
  });

  test("an ioreg that fails or hangs fails the scan with the reason, and a hung one is killed", TIMEOUT, async (t) => {
    const dir = await tempDir(t);
    const failing = await stub(dir, "ioreg-fails", `echo "ioreg: plane IOUSB not found" >&2\nexit 1`);
    await assert.rejects(
      readIoregUsb(failing, 5_000),
      /ioreg-fails -p IOUSB -l -a exited 1: ioreg: plane IOUSB not found/,
    );
    const hanging = await stub(dir, "ioreg-hangs", `echo $$ > "${dir}/pid"\nexec sleep 60`);
    await assert.rejects(readIoregUsb(hanging, 300), /ioreg-hangs -p IOUSB -l -a was killed after 300 ms/);
    const pid = Number(await fs.readFile(path.join(dir, "pid"), "utf8"));
    assert.throws(() => process.kill(pid, 0), { code: "ESRCH" });
  });
});

describe("sysfs", () => {
  /** Writes one device directory the way the kernel does: one value per file. */
  async function device(root: string, name: string, attributes: Record<string, string>): Promise<void> {
    await fs.mkdir(path.join(root, name), { recursive: true });
    for (const [file, value] of Object.entries(attributes))
      await fs.writeFile(path.join(root, name, file), `${value}\n`);
  }

  test(
    "devices are read from their attribute files; interfaces give the class of a class-00 device",
    TIMEOUT,
    async (t) => {
      const root = await tempDir(t);
      await device(root, "usb1", { idVendor: "1d6b", idProduct: "0002", bDeviceClass: "09", busnum: "1", devnum: "1" });
      await device(root, "1-1", { idVendor: "05e3", idProduct: "0610", bDeviceClass: "09", busnum: "1", devnum: "2" });
      const ftdi = { idVendor: "0403", idProduct: "6001", bDeviceClass: "00", product: "FT232R USB UART", busnum: "1" };
      await device(root, "1-1.1", {
        ...ftdi,
        serial: "A50285BI",
        devnum: "7",
        manufacturer: "FTDI",
        removable: "removable",
        bMaxPower: "90mA",
        speed: "12",
      });
      await device(root, "1-1.1:1.0", { bInterfaceClass: "ff" });
      await device(root, "1-1.2", { ...ftdi, serial: "A9GQ3YVN", devnum: "8" });
      await device(root, "1-1.3", {
        idVendor: "1A86",
        idProduct: "7523",
        bDeviceClass: "ff",
        busnum: "1",
        devnum: "9",
      });
      const rows = toUsbDevices(await readSysfsUsb(root));
      assert.deepEqual(
        rows.map((r) => r.id),
        ["usb:0403:6001:A50285BI", "usb:0403:6001:A9GQ3YVN", "usb:1a86:7523@1-1.3"],
      );
      assert.deepEqual(rows[0]!.attributes, {
        vendorProduct: "0403:6001",
        manufacturer: "FTDI",
        type: "Vendor Specific",
        serial: "A50285BI",
        port: "1-1.1",
        bus: 1,
        address: 7,
        removable: true,
        maxPower: "90mA",
        speed: "12 Mb/s",
      });
      assert.equal(rows[0]!.name, "FT232R USB UART");
    },
  );

  test("a machine without a USB bus has no USB devices, and no error", TIMEOUT, async (t) => {
    assert.deepEqual(await readSysfsUsb(path.join(await tempDir(t), "no-such-dir")), []);
  });
});

describe("the graphics scan", () => {
  test(
    "si.graphics() runs in a process of its own, whose JSON the gpu and display providers read",
    TIMEOUT,
    async () => {
      const { gpu, display } = createGraphicsProviders(async () => null);
      const options = { timeoutMs: 10_000, fresh: true, now: 0 };
      const [gpus, displays] = await Promise.all([gpu.scan(options), display.scan(options)]);
      // Whatever this machine has (often nothing in a container): rows, not an error.
      assert.ok(Array.isArray(gpus) && Array.isArray(displays));
      for (const row of gpus) assert.match(row.id, /^gpu:/);
    },
  );

  test(
    "its signal (/sys/class/drm) changes when a display is plugged in or a GPU appears, and not otherwise",
    TIMEOUT,
    async (t) => {
      const root = await tempDir(t);
      const connector = path.join(root, "card0-HDMI-A-1");
      await fs.mkdir(connector, { recursive: true });
      await fs.mkdir(path.join(root, "card0"));
      await fs.writeFile(path.join(connector, "status"), "disconnected\n");
      const before = await readGraphicsSignal(root, "linux");
      assert.equal(before, "card0,card0-HDMI-A-1=disconnected");
      assert.equal(await readGraphicsSignal(root, "linux"), before);
      await fs.writeFile(path.join(connector, "status"), "connected\n");
      const plugged = await readGraphicsSignal(root, "linux");
      assert.notEqual(plugged, before);
      await fs.mkdir(path.join(root, "card1"));
      assert.notEqual(await readGraphicsSignal(root, "linux"), plugged);
    },
  );
});

describe("the simulators' signal (CoreSimulator's Devices directory)", () => {
  test(
    "it changes when a simulator is created or its device.plist is rewritten (a boot), and not otherwise",
    TIMEOUT,
    async (t) => {
      const root = path.join(await tempDir(t), "Devices");
      assert.equal(await readSimulatorsSignal(root), "none");
      const udid = "8A1C2F3E-0B6D-4E8F-9A51-3C7D2E1F0A9B";
      await fs.mkdir(path.join(root, udid), { recursive: true });
      const plist = path.join(root, udid, "device.plist");
      await fs.writeFile(plist, "<plist/>");
      await fs.utimes(plist, 1_700_000_000, 1_700_000_000);
      const created = await readSimulatorsSignal(root);
      assert.notEqual(created, "none");
      assert.equal(await readSimulatorsSignal(root), created);
      await fs.utimes(plist, 1_700_000_060, 1_700_000_060);
      assert.notEqual(await readSimulatorsSignal(root), created);
    },
  );
});
