// USB devices from what each platform prints, as pure functions: Apple's XML property lists,
// ioreg's IOUSB plane (test/fixtures/ioreg-usb.plist: `ioreg -p IOUSB -l -a` of a Mac with a
// hub holding two FT232R adapters of one model with different serials and a CH340 adapter
// without a serial, and a built-in keyboard), and the ids the rows get: stable across a
// replug, distinct for two devices of one model.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { parsePlist } from "../../src/devices/providers/plist.js";
import { parseIoregUsb, toUsbDevices, type UsbRecord } from "../../src/devices/providers/usb.js";
import { REPO_ROOT } from "../helpers/cli.js";

const IOREG_USB = readFileSync(path.join(REPO_ROOT, "test", "fixtures", "ioreg-usb.plist"), "utf8");

/** The same machine after unplugging everything on the hub and plugging it back into other ports. */
function replugged(xml: string): string {
  const moves: [number, number][] = [
    [0x01110000, 0x01120000], // FT232R A50285BI: port 1 → port 2
    [0x01120000, 0x01110000], // FT232R A9GQ3YVN: port 2 → port 1
    [0x01130000, 0x01140000], // CH340 (no serial): port 3 → port 4
  ];
  let out = xml.replace(/<key>locationID<\/key>\s*<integer>(\d+)<\/integer>/g, (whole, value: string) => {
    const move = moves.find(([from]) => from === Number(value));
    return move ? whole.replace(value, String(move[1])) : whole;
  });
  // New bus addresses, as every replug gets.
  out = out.replace(/<key>USB Address<\/key>\s*<integer>(\d+)<\/integer>/g, (whole, value: string) =>
    whole.replace(value, String(Number(value) + 10)),
  );
  return out;
}

describe("XML property lists", () => {
  test("every value type ioreg prints is read, entities decoded", () => {
    const xml = `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>name</key>
	<string>A &amp; B &lt;3&gt; &#x41;&#66;</string>
	<key>empty</key>
	<string/>
	<key>count</key>
	<integer>-42</integer>
	<key>ratio</key>
	<real>0.5</real>
	<key>on</key>
	<true/>
	<key>off</key>
	<false/>
	<key>blob</key>
	<data>
	BANgAQAG
	</data>
	<key>when</key>
	<date>2024-03-15T07:19:22Z</date>
	<key>list</key>
	<array>
		<integer>1</integer>
		<dict/>
		<array/>
	</array>
</dict>
</plist>`;
    assert.deepEqual(parsePlist(xml), {
      name: "A & B <3> AB",
      empty: "",
      count: -42,
      ratio: 0.5,
      on: true,
      off: false,
      blob: "BANgAQAG",
      when: "2024-03-15T07:19:22Z",
      list: [1, {}, []],
    });
  });

  test("what is not a property list is an error that says where", () => {
    assert.throws(() => parsePlist("ioreg: command not found"), /not a property list: expected a value/);
    assert.throws(() => parsePlist("<plist><dict><string>x</string></dict></plist>"), /expected <key>/);
    assert.throws(() => parsePlist("<plist><integer>twelve</integer></plist>"), /<integer> "twelve"/);
    assert.throws(() => parsePlist("<plist><dict>"), /at the end/);
  });
});

describe("ioreg's IOUSB plane", () => {
  const records = parseIoregUsb(IOREG_USB);

  test("every device in the tree is found, nested under controllers and hubs; controllers are not devices", () => {
    assert.deepEqual(
      records.map((r) => [`${r.vendorId}:${r.productId}`, r.serial ?? null, r.port, r.type ?? null]),
      [
        ["05e3:0610", null, "0x01100000", "Hub"],
        ["0403:6001", "A50285BI", "0x01110000", null],
        ["0403:6001", "A9GQ3YVN", "0x01120000", null],
        ["1a86:7523", null, "0x01130000", "Vendor Specific"],
        ["05ac:0342", null, "0x02100000", null],
      ],
    );
    const keyboard = records.find((r) => r.vendorId === "05ac")!;
    assert.equal(keyboard.name, "Apple Internal Keyboard / Trackpad");
    assert.equal(keyboard.manufacturer, "Apple Inc.");
    assert.equal(keyboard.removable, false);
    assert.equal(records[1]!.speed, "12 Mb/s");
    assert.equal(records[1]!.address, 3);
  });

  test("two devices of one model get different ids, from their serials; the hub is left out", () => {
    const rows = toUsbDevices(records);
    assert.deepEqual(
      rows.map((r) => r.id),
      ["usb:0403:6001:A50285BI", "usb:0403:6001:A9GQ3YVN", "usb:1a86:7523@0x01130000", "usb:05ac:0342@0x02100000"],
    );
    assert.equal(new Set(rows.map((r) => r.id)).size, rows.length);
  });

  test("after a replug into other ports (new locationIDs, new bus addresses) a device with a serial keeps its id", () => {
    const before = new Map(toUsbDevices(records).map((r) => [r.attributes.serial, r.id]));
    const after = toUsbDevices(parseIoregUsb(replugged(IOREG_USB)));
    for (const serial of ["A50285BI", "A9GQ3YVN"]) {
      const row = after.find((r) => r.attributes.serial === serial)!;
      assert.equal(row.id, before.get(serial));
      assert.notEqual(
        row.attributes.port,
        toUsbDevices(records).find((r) => r.attributes.serial === serial)!.attributes.port,
      );
    }
    // Without a serial, the port is the only stable name there is: a move to another port is another row.
    assert.ok(after.some((r) => r.id === "usb:1a86:7523@0x01140000"));
  });
});

describe("USB rows", () => {
  const record = (fields: Partial<UsbRecord>): UsbRecord => ({ vendorId: "0403", productId: "6001", ...fields });

  test("the bus address is never part of an id: the same device at a new address keeps its id", () => {
    const first = toUsbDevices([record({ port: "1-1.2", bus: 1, address: 7 })]);
    const again = toUsbDevices([record({ port: "1-1.2", bus: 1, address: 12 })]);
    assert.equal(first[0]!.id, "usb:0403:6001@1-1.2");
    assert.equal(again[0]!.id, first[0]!.id);
  });

  test("a blank serial counts as none, and hubs and root hubs are left out", () => {
    const rows = toUsbDevices([
      record({ serial: "  ", port: "2-1" }),
      record({ vendorId: "1d6b", productId: "0002", type: "Hub" }),
      record({ vendorId: "1d6b", productId: "0003", name: "xHCI Root Hub" }),
    ]);
    assert.deepEqual(
      rows.map((r) => r.id),
      ["usb:0403:6001@2-1"],
    );
  });
});
