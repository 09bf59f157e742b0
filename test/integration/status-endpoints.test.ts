// The daemon's status endpoints, end to end: a real `runner start` against the reference
// control plane, a real job held running on a fifo, /metrics scraped over the state dir's
// socket and parsed strictly, /readyz through a pause and a lost connection, and the real
// `runner status` CLI while the job runs and after the daemon is gone.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { once, type EventEmitter } from "node:events";
import { promises as fs } from "node:fs";
import http from "node:http";
import path from "node:path";
import { promisify } from "node:util";
import { runCli } from "../helpers/cli.js";
import { registerRunner, startTestControlPlane, tempDir } from "../helpers/fixtures.js";
import { startDaemon } from "../helpers/daemon.js";
import { parseExposition, valueOf } from "../helpers/prom-text.js";
import { statusViewSchema } from "../../src/status/view.js";
import { ExitCode } from "../../src/errors.js";
import { freeLoopbackPort } from "../helpers/ports.js";

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request to the daemon: over its socket, or to its loopback port. */
function ask(where: { socketPath: string } | { port: number }, urlPath: string, method = "GET"): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const target = "socketPath" in where ? { socketPath: where.socketPath } : { host: "127.0.0.1", port: where.port };
    const request = http.request({ ...target, path: urlPath, method, timeout: 5000 }, (response) => {
      let body = "";
      response.on("data", (chunk: Buffer) => (body += chunk.toString()));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body }));
    });
    request.on("timeout", () => request.destroy(new Error(`no answer to ${method} ${urlPath} within 5 s`)));
    request.on("error", reject);
    request.end();
  });
}

/** The next event `name` on `emitter` that matches, within the timeout. */
function nextEvent<T>(
  emitter: EventEmitter,
  name: string,
  match: (event: T) => boolean,
  timeoutMs = 15_000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(name, listener);
      reject(new Error(`no matching "${name}" event within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (event: T) => {
      if (!match(event)) return;
      clearTimeout(timer);
      emitter.off(name, listener);
      resolve(event);
    };
    emitter.on(name, listener);
  });
}

describe("status and metrics", () => {
  test(
    "a running daemon serves health, readiness, status and metrics that move with a real job, and runner status shows them",
    { timeout: 120_000 },
    async (t) => {
      const plane = await startTestControlPlane(t, { heartbeatIntervalMs: 1000 });
      const runner = await registerRunner(t, plane);
      const [record] = await plane.admin.listRunners();
      const runnerId = record!.runnerId;
      const socketPath = path.join(runner.stateDir, "status.sock");
      const port = await freeLoopbackPort();
      const daemon = startDaemon(t, [
        ...runner.flags,
        "--device-providers",
        "none",
        "--status-port",
        String(port),
        "--reconnect-base-ms",
        "100",
        "--reconnect-cap-ms",
        "200",
      ]);
      await daemon.waitForLog((l) => l.msg === "connected to the control plane", 30_000);
      const serving = await daemon.waitForLog((l) => /^serving \/healthz/.test(l.msg));
      assert.equal(serving.socket, socketPath);
      assert.equal(serving.port, port);
      const sock = { socketPath };

      assert.equal((await fs.stat(socketPath)).mode & 0o777, 0o600, "only the runner's user may ask");
      assert.deepEqual(JSON.parse((await ask(sock, "/healthz")).body), { status: "ok" });
      const ready = await ask(sock, "/readyz");
      assert.equal(ready.status, 200, ready.body);
      assert.deepEqual(JSON.parse(ready.body), { ready: true, reason: null });
      assert.equal((await ask({ port }, "/readyz")).status, 200, "the loopback port answers the same");
      const notAllowed = await ask(sock, "/status", "POST");
      assert.equal(notAllowed.status, 405);
      assert.equal(notAllowed.headers.allow, "GET");
      assert.equal((await ask(sock, "/nowhere")).status, 404);
      assert.equal((await ask({ port }, "/metrics", "DELETE")).status, 405);

      // A job that runs until the test writes to its fifo.
      const work = await tempDir(t, "runner-status-job-");
      const fifo = path.join(work, "go");
      await promisify(execFile)("mkfifo", [fifo]);
      const started = nextEvent<{ jobId: string; status: string }>(
        plane.cp.events,
        "job",
        (e) => e.status === "started",
      );
      const { job } = await plane.admin.submitJob({
        job: { kind: "command", argv: ["sh", "-c", 'read line < "$1"', "sh", fifo], env: {} },
      });
      await started; // the control plane heard `started`, which the runner sends after counting it

      const status = statusViewSchema.parse(JSON.parse((await ask(sock, "/status")).body));
      assert.equal(status.pid, daemon.child.pid);
      assert.equal(status.runnerId, runnerId);
      assert.equal(status.controlPlaneUrl, plane.cp.url);
      assert.equal(status.connection.state, "connected");
      assert.equal(status.mode, "serving");
      assert.equal(status.jobs.running.length, 1);
      assert.equal(status.jobs.running[0]!.jobId, job.jobId);
      assert.equal(status.jobs.running[0]!.started, true);
      assert.ok(status.jobs.running[0]!.ageSeconds >= 0);
      assert.ok(status.workers.length >= 1, JSON.stringify(status.workers));
      const busy = status.workers.find((w) => w.state === "busy");
      assert.ok(busy && busy.rssBytes !== null && busy.rssBytes > 10 * 2 ** 20, JSON.stringify(status.workers));
      assert.ok(busy.openFds !== null && busy.openFds > 0);
      assert.deepEqual(status.outbox, { results: 0 });
      assert.notEqual(status.devices.phase, "offline", "the device sync is connected too");
      assert.ok(status.devices.inventory === null || status.devices.inventory === 0, "no providers, no rows");

      const metricsReply = await ask(sock, "/metrics");
      assert.match(metricsReply.headers["content-type"] ?? "", /^text\/plain; version=0\.0\.4/);
      const running = parseExposition(metricsReply.body);
      assert.equal(running.get("runner_jobs_total")?.type, "counter");
      assert.equal(running.get("runner_job_dispatch_to_start_seconds")?.type, "histogram");
      assert.equal(running.get("runner_worker_rss_bytes")?.type, "gauge");
      assert.equal(valueOf(running, "runner_connected"), 1);
      assert.equal(valueOf(running, "runner_ready"), 1);
      assert.equal(valueOf(running, "runner_jobs_running"), 1);
      assert.equal(valueOf(running, "runner_jobs_total", { outcome: "succeeded" }), 0);
      assert.equal(valueOf(running, "runner_job_dispatch_to_start_seconds_count"), 1);
      assert.ok(valueOf(running, "runner_job_dispatch_to_start_seconds_sum") > 0);
      assert.equal(valueOf(running, "runner_worker_rss_bytes", { pid: String(busy.pid) }), busy.rssBytes);

      // The real CLI while the job runs.
      const text = await runCli(["status", ...runner.flags]);
      assert.equal(text.code, ExitCode.OK, text.all);
      assert.match(text.stdout, new RegExp(`^daemon: pid ${daemon.child.pid}, runner `, "m"));
      assert.ok(text.stdout.includes(`  connected to ${plane.cp.url} since `), text.stdout);
      assert.ok(text.stdout.includes("  mode: serving; ready for jobs"), text.stdout);
      assert.ok(text.stdout.includes("  jobs running: 1 of 1"), text.stdout);
      assert.match(text.stdout, new RegExp(`^    ${job.jobId} attempt 1: running for \\d+\\.\\d s$`, "m"));
      assert.match(text.stdout, new RegExp(`^    pid ${busy.pid} busy, 0 job\\(s\\) run, up `, "m"));
      assert.ok(text.stdout.includes("  outbox: 0 result(s) awaiting acknowledgement"), text.stdout);
      const json = await runCli(["status", "--json", ...runner.flags]);
      assert.equal(json.code, ExitCode.OK, json.all);
      const local = JSON.parse(json.stdout) as { registered: boolean; daemon: unknown; daemonProblem: unknown };
      assert.equal(local.registered, true);
      assert.equal(local.daemonProblem, null);
      const viaCli = statusViewSchema.parse(local.daemon);
      assert.equal(viaCli.jobs.running[0]?.jobId, job.jobId);

      // The job finishes: its outcome is counted.
      const applied = nextEvent<{ status: string }>(plane.cp.events, "job", (e) => e.status === "result_applied");
      await fs.writeFile(fifo, "go\n");
      await applied;
      await daemon.waitForLog((l) => l.msg === `job ${job.jobId} attempt 1 succeeded`);
      const after = parseExposition((await ask({ port }, "/metrics")).body);
      assert.equal(valueOf(after, "runner_jobs_total", { outcome: "succeeded" }), 1);
      assert.equal(valueOf(after, "runner_jobs_total", { outcome: "failed" }), 0);
      assert.equal(valueOf(after, "runner_jobs_running"), 0);

      // Paused by the control plane: not ready, and back.
      await plane.admin.pauseRunner(runnerId, "maintenance");
      await daemon.waitForLog((l) => /^paused by the control plane/.test(l.msg));
      const paused = await ask(sock, "/readyz");
      assert.equal(paused.status, 503);
      assert.deepEqual(JSON.parse(paused.body), { ready: false, reason: "paused by the control plane" });
      assert.equal(valueOf(parseExposition((await ask(sock, "/metrics")).body), "runner_ready"), 0);
      await plane.admin.resumeRunner(runnerId);
      await daemon.waitForLog((l) => /^resumed by the control plane/.test(l.msg));
      assert.equal((await ask(sock, "/readyz")).status, 200);

      // The control plane goes away: not ready, not connected, a reconnect counted.
      await plane.cp.close();
      await daemon.waitForLog((l) => /reconnecting in/.test(l.msg));
      const gone = await ask(sock, "/readyz");
      assert.equal(gone.status, 503);
      assert.match(
        (JSON.parse(gone.body) as { reason: string }).reason,
        /^not connected \((disconnected|connecting)\)$/,
      );
      const lost = parseExposition((await ask(sock, "/metrics")).body);
      assert.equal(valueOf(lost, "runner_connected"), 0);
      const reconnects = lost.get("runner_reconnects_total")!.samples.reduce((sum, s) => sum + s.value, 0);
      assert.ok(reconnects >= 1, `reconnects counted: ${reconnects}`);
      const offline = statusViewSchema.parse(JSON.parse((await ask(sock, "/status")).body));
      assert.ok(offline.lastError !== null, "the lost connection is the last error");
      const cliOffline = await runCli(["status", ...runner.flags]);
      assert.match(
        cliOffline.stdout,
        /^ {2}not connected to .*: (disconnected|connecting) since .*, \d+ failed attempt\(s\) in a row$/m,
      );
      assert.match(cliOffline.stdout, /^ {2}mode: serving; not ready: not connected/m);

      // Never a secret, anywhere in it.
      const credential = (await fs.readFile(path.join(runner.stateDir, "credential"), "utf8")).trim();
      assert.ok(credential.length > 10);
      for (const endpoint of ["/status", "/metrics", "/readyz", "/healthz"]) {
        const reply = await ask(sock, endpoint);
        assert.ok(!reply.body.includes(credential), `${endpoint} shows the credential`);
      }

      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK, daemon.stderr());
      await assert.rejects(fs.lstat(socketPath), { code: "ENOENT" }, "the socket goes with the daemon");
      const none = await runCli(["status", ...runner.flags]);
      assert.equal(none.code, ExitCode.OK);
      assert.ok(none.stdout.includes(`daemon: no daemon is running: nothing at ${socketPath}`), none.stdout);
      const noneJson = JSON.parse((await runCli(["status", "--json", ...runner.flags])).stdout) as Record<
        string,
        unknown
      >;
      assert.equal(noneJson.daemon, null);
      assert.equal(noneJson.daemonProblem, `no daemon is running: nothing at ${socketPath}`);
    },
  );

  test(
    "a socket a killed daemon left is reported as no daemon, and replaced by the next start",
    { timeout: 120_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const socketPath = path.join(runner.stateDir, "status.sock");
      // A process that binds the socket and is killed: its socket file stays, with no one behind it.
      const holder = spawn(process.execPath, [
        "-e",
        `require("net").createServer().listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, "SIGKILL"))`,
      ]);
      await once(holder, "exit");
      assert.ok((await fs.lstat(socketPath)).isSocket());
      const before = await runCli(["status", ...runner.flags]);
      assert.equal(before.code, ExitCode.OK);
      assert.ok(
        before.stdout.includes(`daemon: no daemon is running: nothing listens on ${socketPath}`),
        before.stdout,
      );

      const daemon = startDaemon(t, [...runner.flags, "--device-providers", "none"]);
      await daemon.waitForLog((l) => /^serving \/healthz/.test(l.msg), 30_000);
      assert.equal((await ask({ socketPath }, "/healthz")).status, 200);
      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK, daemon.stderr());
    },
  );
});
