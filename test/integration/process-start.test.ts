// The macOS start-time probe against a stub `ps` at the process boundary, which replays what
// BSD ps prints for `-o lstart=` in two locales and time zones (the formats seen on macOS).
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test, type TestContext } from "node:test";
import { processStartTime } from "../../src/state/process-start.js";
import { onCleanup } from "../helpers/cleanup.js";

async function stubPs(t: TestContext): Promise<{ ps: string; calls: string }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "runner-ps-"));
  onCleanup(t, () => fs.rm(dir, { recursive: true, force: true }));
  const calls = path.join(dir, "calls");
  const ps = path.join(dir, "ps");
  // In the C locale and UTC: "Mon Nov 30 21:31:34 2026"; in de_DE and Berlin time, as a shell
  // there would see it: "Mo 30 Nov 22:31:34 2026".
  await fs.writeFile(
    ps,
    [
      "#!/bin/sh",
      `printf '%s|LC_ALL=%s|LANG=%s|TZ=%s\\n' "$*" "$LC_ALL" "$LANG" "$TZ" >> '${calls}'`,
      'if [ "$LC_ALL" = C ] && [ "$TZ" = UTC ]; then echo "Mon Nov 30 21:31:34 2026"; else echo "Mo 30 Nov 22:31:34 2026"; fi',
      "",
    ].join("\n"),
    { mode: 0o755 },
  );
  return { ps, calls };
}

test(
  "on macOS the start time is read with ps by its given path, in the C locale and UTC, whatever the caller's locale",
  { timeout: 20_000 },
  async (t) => {
    const { ps, calls } = await stubPs(t);
    const saved = { LANG: process.env.LANG, TZ: process.env.TZ };
    process.env.LANG = "de_DE.UTF-8";
    process.env.TZ = "Europe/Berlin";
    try {
      const first = await processStartTime(4242, "darwin", ps);
      const second = await processStartTime(4242, "darwin", ps);
      assert.equal(first, "lstart-utc:Mon Nov 30 21:31:34 2026");
      assert.equal(second, first, "two readers get one value");
    } finally {
      for (const [key, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[key];
        else process.env[key] = value;
      }
    }
    const lines = (await fs.readFile(calls, "utf8")).trim().split("\n");
    assert.deepEqual(lines, Array(2).fill("-o lstart= -p 4242|LC_ALL=C|LANG=|TZ=UTC"));
  },
);

test("a ps that fails or prints nothing gives no start time rather than an error", { timeout: 20_000 }, async () => {
  assert.equal(await processStartTime(4242, "darwin", "/nonexistent/ps"), null);
  assert.equal(await processStartTime(4242, "darwin", "/bin/true"), null);
});
