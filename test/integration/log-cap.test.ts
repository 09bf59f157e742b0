// The launchd log's cap, on real files opened as launchd opens StandardOutPath (O_APPEND, held
// open): the file is copied aside and truncated in place, and the writer's next line lands at
// its start.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { constants, promises as fs } from "node:fs";
import path from "node:path";
import { capLogFile, LAUNCHD_LOG_CAP, LAUNCHD_LOG_ENV, planRotation } from "../../src/service/log-cap.js";
import { registerRunner, startTestControlPlane, tempDir } from "../helpers/fixtures.js";
import { startDaemon } from "../helpers/daemon.js";
import { onCleanup } from "../helpers/cleanup.js";

describe("the launchd log's cap", () => {
  test(
    "under the cap nothing happens; at the cap older copies shift up and the newest is copied to .1",
    { timeout: 10_000 },
    () => {
      const cap = { maxBytes: 100, keep: 3 };
      assert.equal(planRotation("/l/runner.log", 99, cap), null);
      assert.deepEqual(planRotation("/l/runner.log", 100, cap), {
        shift: [
          ["/l/runner.log.2", "/l/runner.log.3"],
          ["/l/runner.log.1", "/l/runner.log.2"],
        ],
        copyTo: "/l/runner.log.1",
      });
      assert.deepEqual(planRotation("/l/runner.log", 500, { maxBytes: 100, keep: 0 }), { shift: [], copyTo: null });
    },
  );

  test(
    "a file held open for appending is copied aside and truncated, and the next write lands at offset 0",
    { timeout: 10_000 },
    async (t) => {
      const dir = await tempDir(t);
      const file = path.join(dir, "runner.log");
      const launchd = await fs.open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND, 0o600);
      onCleanup(t, () => launchd.close());
      await fs.writeFile(`${file}.1`, "older\n");
      await fs.writeFile(`${file}.2`, "oldest\n");
      const before = "x".repeat(150) + "\n";
      await launchd.write(before);

      const rotation = await capLogFile(file, { maxBytes: 100, keep: 2 });
      assert.equal(rotation?.copyTo, `${file}.1`);
      assert.equal(await fs.readFile(`${file}.1`, "utf8"), before);
      assert.equal(await fs.readFile(`${file}.2`, "utf8"), "older\n", "the oldest copy was dropped");
      assert.equal((await fs.stat(file)).size, 0);

      await launchd.write("after the cap\n");
      assert.equal(await fs.readFile(file, "utf8"), "after the cap\n", "no hole before the new line");
      assert.equal(await capLogFile(file, { maxBytes: 100, keep: 2 }), null, "under the cap again");
      assert.equal(await capLogFile(path.join(dir, "missing.log"), { maxBytes: 1, keep: 1 }), null);
    },
  );
});

describe("a runner under launchd", () => {
  test("caps the log file the plist names once it has passed its start-up checks", { timeout: 60_000 }, async (t) => {
    const plane = await startTestControlPlane(t);
    const runner = await registerRunner(t, plane);
    const log = path.join(await tempDir(t), "runner.log");
    await fs.writeFile(log, Buffer.alloc(LAUNCHD_LOG_CAP.maxBytes, "x"));
    const daemon = startDaemon(t, [...runner.flags, "--device-providers", "none"], { [LAUNCHD_LOG_ENV]: log });
    const rotated = await daemon.waitForLog((line) => line.msg === "the log file reached its cap and was rotated");
    assert.equal(rotated.keptAs, `${log}.1`);
    assert.equal((await fs.stat(`${log}.1`)).size, LAUNCHD_LOG_CAP.maxBytes);
    assert.equal((await fs.stat(log)).size, 0);
    await daemon.waitForLog((line) => line.msg === "connected to the control plane");
    assert.equal(await daemon.stop("SIGTERM"), 0);
  });
});
