// The reverse-proxy examples in deploy/ loaded by the real servers (test/unit/deploy-configs
// checks their numbers against the control plane's): `nginx -t` on the nginx example inside a
// minimal nginx.conf, as /etc/nginx/nginx.conf's http block includes it, with a certificate of
// this machine in place of the example's paths; `caddy validate` on the Caddyfile as it is;
// and Caddy running the example (plain HTTP on a loopback port in place of its TLS site)
// carries a real daemon's channel to a control plane. replica-death.test.ts runs the nginx
// example in front of two replicas. Skipped where the
// server is not installed; a failure under CI=true (.ci/run installs nginx-light and caddy).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { startDaemon } from "../helpers/daemon.js";
import { until } from "../helpers/until.js";
import { registerRunner, startTestControlPlane, tempDir } from "../helpers/fixtures.js";
import {
  CADDY_EXAMPLE,
  checkNginxConfig,
  nginxSite,
  requireServer,
  selfSignedCertificate,
  startCaddy,
  validateCaddyfile,
  writeNginxConfig,
} from "../helpers/reverse-proxy.js";

const TIMEOUT = { timeout: 60_000 };

describe("the deploy examples in the real servers", () => {
  test("nginx -t accepts the nginx example included in an http block", TIMEOUT, async (t) => {
    if (!requireServer(t, "nginx")) return;
    const dir = await tempDir(t, "runner-nginx-");
    const conf = writeNginxConfig(dir, nginxSite({ tls: selfSignedCertificate(dir) }));
    const { status, output } = checkNginxConfig(dir, conf);
    assert.equal(status, 0, output);
    assert.match(output, /test is successful/);
  });

  test("caddy validate accepts the Caddy example", TIMEOUT, async (t) => {
    if (!requireServer(t, "caddy")) return;
    const dir = await tempDir(t, "runner-caddy-");
    const { status, output } = validateCaddyfile(dir, CADDY_EXAMPLE);
    assert.equal(status, 0, output);
    assert.match(output, /Valid configuration/);
  });

  test("Caddy running the example carries a daemon's channel: a job runs through it", TIMEOUT, async (t) => {
    if (!requireServer(t, "caddy")) return;
    const dir = await tempDir(t, "runner-caddy-");
    const plane = await startTestControlPlane(t, { heartbeatIntervalMs: 1000 });
    const caddy = await startCaddy(t, dir, Number(new URL(plane.cp.url).port));
    const runner = await registerRunner(t, plane, { url: caddy.url });
    const daemon = startDaemon(t, [...runner.flags, "--reconnect-base-ms", "100", "--reconnect-cap-ms", "400"]);
    await daemon.waitForLog((line) => line.msg === "connected to the control plane", 30_000);
    const { job } = await plane.admin.submitJob({ job: { kind: "command", argv: ["echo", "via caddy"], env: {} } });
    await until("the job to finish", async () => {
      const { status } = (await plane.admin.getJob(job.jobId)).job;
      return ["queued", "assigned", "running"].includes(status) ? undefined : status;
    });
    const { job: view, logs } = await plane.admin.getJob(job.jobId);
    assert.equal(view.status, "succeeded");
    assert.deepEqual(
      logs.map((chunk) => chunk.data),
      ["via caddy\n"],
    );
  });
});
