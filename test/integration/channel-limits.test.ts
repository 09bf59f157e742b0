// The runner's side of the channel's limits, end to end against the reference control plane:
// frames that fit a 1024-byte limit, a plain GET on the channel path, and how soon a runner
// is back after a black hole.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { registerRunner, startTestControlPlane, tempDir } from "../helpers/fixtures.js";
import { startDaemon } from "../helpers/daemon.js";
import { startTcpProxy } from "../helpers/tcp-proxy.js";
import { HANDSHAKE_FLOOR_MS, HANDSHAKE_HEARTBEATS } from "../../src/channel/machine.js";
import type { JobView } from "../../src/protocol/http.js";
import WebSocket from "ws";
import { register } from "../../src/api-client/runner-api.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { fingerprintOf } from "../../src/state/host.js";
import { channelUrl } from "../../src/daemon/daemon.js";
import {
  AGENT_VERSION_HEADER,
  PROTOCOL_HEADER,
  RUNNER_ID_HEADER,
  decodeControlMessage,
  encode,
  type ControlMessage,
} from "../../src/protocol/channel.js";
import { NO_PROXY } from "../../src/net/proxy.js";
import { onCleanup } from "../helpers/cleanup.js";

const finished = (job: JobView) => ["succeeded", "failed", "cancelled", "timed_out"].includes(job.status);

/** The output the job below writes: control characters (6 bytes each once escaped), multi-byte UTF-8 and a byte that is not UTF-8. */
const OUTPUT_SCRIPT = `
const parts = [];
for (let i = 0; i < 400; i++) {
  parts.push(Buffer.from(Array.from({ length: 31 }, (_, c) => c + 1)));
  parts.push(Buffer.from("é€😀 line " + i + "\\n"));
  parts.push(Buffer.from([0xff]));
}
const all = Buffer.concat(parts);
// Several writes, cut at odd places (inside characters too).
for (let at = 0; at < all.length; at += 777) process.stdout.write(all.subarray(at, at + 777));
`;
function expectedOutput(): string {
  const parts: Buffer[] = [];
  for (let i = 0; i < 400; i++) {
    parts.push(Buffer.from(Array.from({ length: 31 }, (_, c) => c + 1)));
    parts.push(Buffer.from("é€😀 line " + i + "\n"));
    parts.push(Buffer.from([0xff]));
  }
  // A byte that is not UTF-8 arrives as U+FFFD.
  return Buffer.concat(parts).toString("utf8");
}

async function waitForJob(
  plane: Awaited<ReturnType<typeof startTestControlPlane>>,
  jobId: string,
  timeoutMs = 30_000,
): Promise<JobView> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { job } = await plane.admin.getJob(jobId);
    if (finished(job)) return job;
    if (Date.now() > deadline) throw new Error(`job ${jobId} did not finish; last: ${JSON.stringify(job)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("the channel's limits", () => {
  test(
    "against a control plane announcing 1024-byte frames, every byte of escaped, multi-byte output arrives in order, and no frame is refused",
    { timeout: 90_000 },
    async (t) => {
      const plane = await startTestControlPlane(t, {
        dataDir: await tempDir(t, "runner-cp-"),
        heartbeatIntervalMs: 1000,
        maxFrameBytes: 1024,
      });
      const runner = await registerRunner(t, plane);
      const daemon = startDaemon(t, [
        ...runner.flags,
        "--device-providers",
        "none",
        "--reconnect-base-ms",
        "100",
        "--reconnect-cap-ms",
        "400",
      ]);
      await daemon.waitForLog((l) => l.msg === "connected to the control plane", 20_000);
      const { job } = await plane.admin.submitJob({
        job: { kind: "command", argv: [process.execPath, "-e", OUTPUT_SCRIPT], env: {} },
      });
      const done = await waitForJob(plane, job.jobId);
      assert.equal(done.status, "succeeded", JSON.stringify(done));

      const { logs } = await plane.admin.getJob(job.jobId);
      const stdout = logs.filter((l) => l.stream === "stdout").sort((a, b) => a.seq - b.seq);
      assert.deepEqual(
        stdout.map((l) => l.seq),
        stdout.map((_, i) => i),
        "consecutive seq from 0: nothing lost",
      );
      const arrived = stdout.map((l) => l.data).join("");
      const expected = expectedOutput();
      assert.ok(
        arrived === expected,
        `${arrived.length} of ${expected.length} characters arrived, ${arrived === expected.slice(0, arrived.length) ? "a prefix" : "altered"}`,
      );
      assert.ok(
        stdout.length >= Buffer.byteLength(JSON.stringify(expectedOutput())) / 1024,
        `split to fit: ${stdout.length} chunks`,
      );
      assert.doesNotMatch(plane.logs(), /frame over the size limit|1009/);
      assert.equal(
        daemon.lines.filter((l) => l.msg === "connected to the control plane").length,
        1,
        "never reconnected",
      );
      assert.ok(
        !daemon.lines.some((l) => /larger than the frame limit/.test(l.msg)),
        "no frame held back by the runner's own guard",
      );
    },
  );

  test(
    "a plain GET on the channel path is answered 400 bad_request with the protocol's error body",
    { timeout: 30_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const response = await fetch(`${plane.cp.url}/api/v1/channel`);
      assert.equal(response.status, 400);
      const body = (await response.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, "bad_request");
      assert.match(body.error.message, /WebSocket endpoint/);
    },
  );

  test(
    "after a black hole that swallows its reconnect attempts, a runner is back within the documented bound: 2 × handshake timeout + reconnect cap",
    { timeout: 60_000 },
    async (t) => {
      const heartbeatMs = 300;
      const capMs = 400;
      const plane = await startTestControlPlane(t, {
        dataDir: await tempDir(t, "runner-cp-"),
        heartbeatIntervalMs: heartbeatMs,
      });
      const proxy = await startTcpProxy(t, Number(new URL(plane.cp.url).port));
      const runner = await registerRunner(t, plane, { url: proxy.url });
      const daemon = startDaemon(t, [
        ...runner.flags,
        "--device-providers",
        "none",
        "--reconnect-base-ms",
        "100",
        "--reconnect-cap-ms",
        String(capMs),
      ]);
      await daemon.waitForLog((l) => l.msg === "connected to the control plane", 20_000);
      const connections = () => daemon.lines.filter((l) => l.msg === "connected to the control plane").length;

      // The README's bound: handshake timeout S = min(10 s, max(2 s, 2 × heartbeat)).
      const handshakeMs = Math.min(10_000, Math.max(HANDSHAKE_FLOOR_MS, HANDSHAKE_HEARTBEATS * heartbeatMs));
      const boundMs = 2 * handshakeMs + capMs;

      for (let outage = 0; outage < 2; outage++) {
        const before = connections();
        proxy.blackhole({ swallowNew: true });
        const deadLinks = () => daemon.lines.filter((l) => /no pong within/.test(l.msg)).length;
        const noticedBefore = deadLinks();
        await daemon.waitForLog(() => deadLinks() > noticedBefore, 10_000);
        // Hold the black hole until an attempt is inside it: the worst moment for the link to return.
        const swallowedBefore = proxy.swallowed();
        const deadline = Date.now() + 10_000;
        while (proxy.swallowed() === swallowedBefore) {
          if (Date.now() > deadline) throw new Error("no reconnect attempt reached the black hole");
          await new Promise((r) => setTimeout(r, 10));
        }
        proxy.resume();
        const resumedAt = Date.now();
        await daemon.waitForLog(() => connections() > before, 30_000);
        const awayMs = Date.now() - resumedAt;
        t.diagnostic(`outage ${outage + 1}: back ${awayMs} ms after the link returned (bound ${boundMs} ms)`);
        assert.ok(awayMs <= boundMs, `back after ${awayMs} ms, over the documented ${boundMs} ms`);
      }
    },
  );

  test(
    "a huge unknown frame from a runner makes a bounded log line and a bounded error frame at the control plane",
    { timeout: 30_000 },
    async (t) => {
      const plane = await startTestControlPlane(t, { heartbeatIntervalMs: 5_000 });
      const { token } = await plane.admin.createRegistrationToken(60);
      const host = { hostname: "huge", platform: "linux", arch: "x64", fingerprint: fingerprintOf("machine-huge") };
      const id = await register({ url: plane.cp.url, timeoutMs: 5_000, proxy: NO_PROXY }, token, {
        protocolVersion: PROTOCOL_VERSION,
        agentVersion: AGENT_VERSION,
        name: "huge",
        labels: [],
        host,
        replace: false,
      });
      const socket = new WebSocket(channelUrl(plane.cp.url, false), {
        headers: {
          authorization: `Bearer ${id.credential}`,
          [RUNNER_ID_HEADER]: id.runnerId,
          [PROTOCOL_HEADER]: String(PROTOCOL_VERSION),
          [AGENT_VERSION_HEADER]: AGENT_VERSION,
        },
      });
      onCleanup(t, () => socket.terminate());
      const received: ControlMessage[] = [];
      socket.on("message", (data) => {
        const decoded = decodeControlMessage(data.toString());
        if (decoded.ok) received.push(decoded.message);
      });
      await new Promise((resolve, reject) => socket.once("open", resolve).once("error", reject));
      socket.send(
        encode({
          type: "hello",
          protocolVersion: PROTOCOL_VERSION,
          agentVersion: AGENT_VERSION,
          runnerId: id.runnerId,
          capacity: 1,
          running: [],
          pendingResults: [],
        }),
      );
      const until = async (check: () => boolean, what: string) => {
        const deadline = Date.now() + 10_000;
        while (!check()) {
          if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
          await new Promise((r) => setTimeout(r, 10));
        }
      };
      await until(() => received.some((m) => m.type === "welcome"), "the welcome");
      socket.send(JSON.stringify({ type: "\u0001".repeat(150_000) })); // 900 KB on the wire
      await until(() => received.some((m) => m.type === "error"), "the error answer");
      const error = received.find((m) => m.type === "error") as Extract<ControlMessage, { type: "error" }>;
      assert.equal(error.code, "unknown_type");
      assert.ok(error.message.length <= 1100, `the error message has ${error.message.length} characters`);
      const longest = Math.max(
        ...plane
          .logs()
          .split("\n")
          .map((l) => l.length),
      );
      assert.ok(longest < 16_000, `the control plane's longest log line has ${longest} characters`);
    },
  );
});
