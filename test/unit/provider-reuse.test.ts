// When a provider's expensive read (si.graphics(), simctl) runs again and when its last answer
// is reused: the pure decision, and the graphics providers with their signal and read
// replaced by counters (time passed in).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import type { Systeminformation } from "systeminformation";
import {
  createGraphicsProviders,
  GRAPHICS_MAX_AGE_MS,
  readGraphicsSignal,
} from "../../src/devices/providers/graphics.js";
import { needsFullScan } from "../../src/devices/providers/reuse.js";

const MAX = { maxAgeMs: 600_000 };

describe("needsFullScan", () => {
  test("a first scan, a fresh one, an old answer or a changed signal read again; otherwise the answer is reused", () => {
    const last = { signal: "card0,card0-HDMI-A-1=disconnected", at: 1_000 };
    assert.equal(needsFullScan(null, last.signal, { now: 1_000, fresh: false, ...MAX }), true);
    assert.equal(needsFullScan(last, last.signal, { now: 2_000, fresh: true, ...MAX }), true);
    assert.equal(needsFullScan(last, last.signal, { now: 601_000, fresh: false, ...MAX }), true);
    assert.equal(needsFullScan(last, "card0,card0-HDMI-A-1=connected", { now: 2_000, fresh: false, ...MAX }), true);
    assert.equal(needsFullScan(last, last.signal, { now: 600_999, fresh: false, ...MAX }), false);
  });

  test("where there is no signal (null before and now) only the age decides", () => {
    const last = { signal: null, at: 0 };
    assert.equal(needsFullScan(last, null, { now: 599_999, fresh: false, ...MAX }), false);
    assert.equal(needsFullScan(last, null, { now: 600_000, fresh: false, ...MAX }), true);
  });
});

describe("the graphics providers", () => {
  const answer = (model: string): Systeminformation.GraphicsData =>
    ({
      controllers: [{ vendor: "NVIDIA", model, busAddress: "0000:01:00.0", vram: 8192, vramDynamic: false }],
      displays: [],
    }) as unknown as Systeminformation.GraphicsData;

  test("gpu and display share one read per scan, and periodic scans reuse it until the signal changes", async () => {
    let signal = "card0";
    let reads = 0;
    const { gpu, display } = createGraphicsProviders(
      async () => signal,
      async () => answer(`RTX ${++reads}`),
    );
    const scan = (now: number, fresh = false) =>
      Promise.all([gpu.scan({ timeoutMs: 1_000, fresh, now }), display.scan({ timeoutMs: 1_000, fresh, now })]);
    const [first] = await scan(0, true);
    assert.equal(reads, 1);
    assert.equal(first[0]!.attributes.model, "RTX 1");
    await scan(60_000);
    await scan(120_000);
    assert.equal(reads, 1, "nothing changed: si.graphics() did not run again");
    signal = "card0,card1";
    const [afterChange] = await scan(180_000);
    assert.equal(reads, 2);
    assert.equal(afterChange[0]!.attributes.model, "RTX 2");
    await scan(180_000 + GRAPHICS_MAX_AGE_MS);
    assert.equal(reads, 3, "an answer as old as the maximum age is read again");
    await scan(180_000 + GRAPHICS_MAX_AGE_MS + 1, true);
    assert.equal(reads, 4, "a fresh scan always reads");
  });

  test("a failed read is not cached: the next scan reads again", async () => {
    let reads = 0;
    const { gpu } = createGraphicsProviders(
      async () => "card0",
      async () => {
        reads++;
        if (reads === 1) throw new Error("lspci: not found");
        return answer("RTX");
      },
    );
    await assert.rejects(gpu.scan({ timeoutMs: 1_000, fresh: true, now: 0 }), /lspci/);
    assert.equal((await gpu.scan({ timeoutMs: 1_000, fresh: false, now: 1 })).length, 1);
    assert.equal(reads, 2);
  });

  test("off Linux there is no signal, and on Linux a machine without /sys/class/drm has none either", async () => {
    assert.equal(await readGraphicsSignal("/sys/class/drm", "darwin"), null);
    assert.equal(await readGraphicsSignal("/nonexistent/drm", "linux"), null);
  });
});
