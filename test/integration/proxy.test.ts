// Proxies: `runner register` and `runner start` against the reference control plane on
// loopback, through a CONNECT proxy on loopback (test/helpers/connect-proxy.ts), chosen by
// HTTP(S)_PROXY, NO_PROXY or the proxy setting.
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { promises as fs } from "node:fs";
import path from "node:path";
import { once } from "node:events";
import { runCli, type CliResult } from "../helpers/cli.js";
import { registerRunner, startTestControlPlane, tempDir, type TestControlPlane } from "../helpers/fixtures.js";
import { startDaemon, type LogLine } from "../helpers/daemon.js";
import { startConnectProxy } from "../helpers/connect-proxy.js";
import { ExitCode } from "../../src/errors.js";
import { API_PREFIX } from "../../src/protocol/http.js";
import { CHANNEL_PATH } from "../../src/protocol/channel.js";
import type { JobEvent } from "../../src/control-plane/queue/job-queue.js";

const CONNECTED = (line: LogLine) => line.msg === "connected to the control plane";

/** Every proxy variable set (empty ones count as unset), so the test's own environment cannot leak in. */
function proxyEnv(vars: Record<string, string>): Record<string, string> {
  const names = ["http_proxy", "https_proxy", "no_proxy"];
  return {
    ...Object.fromEntries(
      names.flatMap((n) => [
        [n, ""],
        [n.toUpperCase(), ""],
      ]),
    ),
    ...vars,
  };
}

interface Registered {
  flags: string[];
  result: CliResult;
}

async function register(
  t: TestContext,
  plane: TestControlPlane,
  env: Record<string, string>,
  extra: string[] = [],
): Promise<Registered> {
  const root = await tempDir(t);
  // As in fixtures.ts: the store and the host's id in a config file, which start takes too.
  const configFile = path.join(root, "config.json");
  await fs.writeFile(configFile, JSON.stringify({ credentialStore: "file", machineId: "proxy-test" }));
  const flags = ["--config", configFile, "--state-dir", path.join(root, "state")];
  const result = await runCli(
    ["register", "--url", plane.cp.url, "--token-file", await plane.tokenFile(root), "--name", path.basename(root)]
      .concat(flags)
      .concat(extra),
    { env },
  );
  return { flags, result };
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, "close");
  return port;
}

/** Submits a command job and resolves once its result is applied (the control plane's own event). */
async function runJob(plane: TestControlPlane): Promise<string> {
  const applied = new Set<string>();
  let wanted: string | null = null;
  let resolveDone!: () => void;
  const done = new Promise<void>((resolve) => (resolveDone = resolve));
  const onJob = (event: JobEvent) => {
    if (event.status !== "result_applied") return;
    applied.add(event.jobId);
    if (event.jobId === wanted) resolveDone();
  };
  plane.cp.events.on("job", onJob);
  try {
    const { job } = await plane.admin.submitJob({ job: { kind: "command", argv: ["sh", "-c", "echo hi"], env: {} } });
    wanted = job.jobId;
    if (applied.has(job.jobId)) resolveDone();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      done,
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("the job did not finish")), 20_000))),
    ]);
    clearTimeout(timer);
    return (await plane.admin.getJob(job.jobId)).job.status;
  } finally {
    plane.cp.events.off("job", onJob);
  }
}

describe("proxies", () => {
  test(
    "register and start go through HTTP_PROXY: the API requests and the WebSocket are tunnelled, and a job runs",
    { timeout: 90_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const proxy = await startConnectProxy(t);
      const cp = new URL(plane.cp.url).host;
      const env = proxyEnv({ HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url });

      const runner = await register(t, plane, env);
      assert.equal(runner.result.code, 0, runner.result.all);
      assert.ok(proxy.requests.length >= 1, "register's request went through the proxy");
      assert.ok(
        proxy.requests.some((r) => r.firstLine?.startsWith(`POST ${API_PREFIX}/runners/register `)),
        JSON.stringify(proxy.requests),
      );

      const daemon = startDaemon(t, [...runner.flags, "--device-providers", "none"], env);
      await daemon.waitForLog(CONNECTED, 20_000);
      assert.ok(
        daemon.lines.some((l) => l.msg === `the control plane is reached through the proxy ${proxy.url} (HTTP_PROXY)`),
        daemon.stderr(),
      );
      assert.ok(
        proxy.requests.some((r) => r.firstLine?.startsWith(`POST ${API_PREFIX}/runners/verify `)),
        "start's verify went through the proxy",
      );
      assert.ok(
        proxy.requests.some((r) => r.firstLine?.startsWith(`GET ${CHANNEL_PATH} `)),
        `the WebSocket went through the proxy: ${JSON.stringify(proxy.requests)}`,
      );
      assert.deepEqual(
        proxy.requests.map((r) => [r.target, r.status]),
        proxy.requests.map(() => [cp, 200]),
        "every tunnel went to the control plane's host:port",
      );

      assert.equal(await runJob(plane), "succeeded");
      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
    },
  );

  test("NO_PROXY naming the control plane bypasses the proxy: it sees nothing", { timeout: 90_000 }, async (t) => {
    const plane = await startTestControlPlane(t);
    const proxy = await startConnectProxy(t);
    const env = proxyEnv({ HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url, NO_PROXY: "localhost, 127.0.0.1" });

    const runner = await register(t, plane, env);
    assert.equal(runner.result.code, 0, runner.result.all);
    const daemon = startDaemon(t, [...runner.flags, "--device-providers", "none"], env);
    await daemon.waitForLog(CONNECTED, 20_000);
    assert.ok(daemon.lines.some((l) => l.msg === "the control plane is reached directly (no proxy applies)"));
    assert.equal(await runJob(plane), "succeeded");
    assert.deepEqual(proxy.requests, []);
    assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
  });

  test(
    "a proxy that wants credentials gets them from the URL, and the password shows in no output",
    { timeout: 90_000 },
    async (t) => {
      const password = "pr0xy-Pa55w0rd";
      const plane = await startTestControlPlane(t);
      const proxy = await startConnectProxy(t, { credentials: { user: "runner", password } });
      const withCredentials = `http://runner:${password}@127.0.0.1:${proxy.port}`;
      const env = proxyEnv({ http_proxy: withCredentials });

      const runner = await register(t, plane, env);
      assert.equal(runner.result.code, 0, runner.result.all);
      const daemon = startDaemon(t, [...runner.flags, "--device-providers", "none", "--log-level", "debug"], env);
      await daemon.waitForLog(CONNECTED, 20_000);
      assert.ok(
        daemon.lines.some(
          (l) =>
            l.msg === `the control plane is reached through the proxy http://***@127.0.0.1:${proxy.port} (http_proxy)`,
        ),
        daemon.stderr(),
      );
      assert.ok(proxy.requests.some((r) => r.firstLine?.startsWith(`GET ${CHANNEL_PATH} `)));
      assert.ok(
        proxy.requests.every((r) => r.status === 200),
        JSON.stringify(proxy.requests),
      );
      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
      for (const output of [runner.result.all, daemon.stderr()]) assert.ok(!output.includes(password), output);
    },
  );

  test(
    "a proxy that refuses the tunnel (407) is retried like an outage, not taken for the control plane refusing the runner",
    { timeout: 90_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const proxy = await startConnectProxy(t, { credentials: { user: "runner", password: "right" } });
      const good = await register(t, plane, proxyEnv({ HTTP_PROXY: `http://runner:right@127.0.0.1:${proxy.port}` }));
      assert.equal(good.result.code, 0, good.result.all);

      const wrong = "wr0ng-Pa55";
      const env = proxyEnv({ HTTP_PROXY: `http://runner:${wrong}@127.0.0.1:${proxy.port}` });
      const daemon = startDaemon(
        t,
        [...good.flags, "--device-providers", "none", "--reconnect-base-ms", "50", "--reconnect-cap-ms", "200"],
        env,
      );
      const refused = (l: LogLine) =>
        typeof l.msg === "string" && l.msg.includes("the proxy refused the tunnel: HTTP 407");
      await daemon.waitForLog(refused, 20_000);
      // A second refusal: the daemon is still there, retrying with its backoff.
      await daemon.waitForLog((l) => refused(l) && daemon.lines.filter(refused).length >= 2, 20_000);
      assert.equal(daemon.child.exitCode, null, "still running");
      assert.ok(
        daemon.lines.some(
          (l) =>
            l.finding === "control_plane_unavailable" &&
            /through the proxy http:\/\/\*\*\*@127\.0\.0\.1:\d+ \(HTTP_PROXY\): Proxy response \(407\)/.test(l.msg),
        ),
        `start's verify named the proxy and its answer: ${daemon.stderr()}`,
      );
      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
      assert.ok(!daemon.stderr().includes(wrong), daemon.stderr());
    },
  );

  test(
    "a proxy that denies the tunnel (403) is retried too: the runner does not stop as if the control plane refused it",
    { timeout: 90_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const proxy = await startConnectProxy(t, { denyAll: true });
      const runner = await register(t, plane, proxyEnv({}));
      assert.equal(runner.result.code, 0, runner.result.all);
      const daemon = startDaemon(
        t,
        [...runner.flags, "--device-providers", "none", "--reconnect-base-ms", "50", "--reconnect-cap-ms", "200"],
        proxyEnv({ HTTP_PROXY: proxy.url }),
      );
      const refused = (l: LogLine) =>
        typeof l.msg === "string" && l.msg.includes("the proxy refused the tunnel: HTTP 403");
      await daemon.waitForLog((l) => refused(l) && daemon.lines.filter(refused).length >= 2, 20_000);
      assert.equal(daemon.child.exitCode, null, "still running");
      assert.ok(
        daemon.lines.some((l) => l.finding === "control_plane_unavailable" && /Proxy response \(403\)/.test(l.msg)),
        daemon.stderr(),
      );
      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
    },
  );

  test(
    "an unreachable proxy makes register fail as control_plane_unavailable naming the proxy, redacted; --proxy off goes direct",
    { timeout: 90_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const port = await closedPort();
      const env = proxyEnv({ HTTP_PROXY: `http://user:s3cret-word@127.0.0.1:${port}` });

      const failed = await register(t, plane, env);
      assert.equal(failed.result.code, ExitCode.UNAVAILABLE, failed.result.all);
      assert.match(
        failed.result.stderr,
        new RegExp(`through the proxy http://\\*\\*\\*@127\\.0\\.0\\.1:${port} \\(HTTP_PROXY\\): ECONNREFUSED`),
      );
      assert.ok(!failed.result.all.includes("s3cret-word"), failed.result.all);

      const direct = await register(t, plane, env, ["--proxy", "off"]);
      assert.equal(direct.result.code, 0, direct.result.all);
    },
  );

  test("the proxy setting wins over the variables", { timeout: 90_000 }, async (t) => {
    const plane = await startTestControlPlane(t);
    const proxy = await startConnectProxy(t);
    const env = proxyEnv({ HTTP_PROXY: `http://127.0.0.1:${await closedPort()}`, NO_PROXY: "127.0.0.1" });
    const runner = await register(t, plane, env, ["--proxy", proxy.url]);
    assert.equal(runner.result.code, 0, runner.result.all);
    assert.ok(proxy.requests.some((r) => r.firstLine?.startsWith(`POST ${API_PREFIX}/runners/register `)));
  });

  test(
    "a bad proxy URL is a usage error (exit 2) naming the variable or the setting, never repeating it",
    { timeout: 90_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const secret = "n0t-4-l0g";
      const bad = `socks5://user:${secret}@127.0.0.1:1080`;

      const fromVariable = await register(t, plane, proxyEnv({ HTTP_PROXY: bad }));
      assert.equal(fromVariable.result.code, ExitCode.USAGE, fromVariable.result.all);
      assert.match(fromVariable.result.stderr, /HTTP_PROXY is not a usable proxy URL: only http:\/\/ and https:\/\//);

      const fromSetting = await register(t, plane, proxyEnv({}), ["--proxy", bad]);
      assert.equal(fromSetting.result.code, ExitCode.USAGE, fromSetting.result.all);
      assert.match(fromSetting.result.stderr, /--proxy: the value is not valid/);

      // start: its checks need the control plane, so the variable stops it before anything runs.
      const runner = await register(t, plane, proxyEnv({}));
      assert.equal(runner.result.code, 0, runner.result.all);
      const daemon = startDaemon(t, [...runner.flags, "--device-providers", "none"], proxyEnv({ HTTP_PROXY: bad }));
      assert.equal(await daemon.exited, ExitCode.USAGE, daemon.stderr());
      assert.match(daemon.stderr(), /HTTP_PROXY is not a usable proxy URL/);

      for (const output of [fromVariable.result.all, fromSetting.result.all, daemon.stderr()])
        assert.ok(!output.includes(secret), output);
    },
  );
});

describe("proxies and the service (systemctl stubbed)", () => {
  /** A home of its own, and stub systemctl/loginctl that do nothing, first on PATH. */
  async function serviceEnv(t: TestContext): Promise<{ unitFile: string; env: Record<string, string> }> {
    const home = await tempDir(t, "runner-home-");
    const stubs = await tempDir(t, "runner-stubs-");
    for (const program of ["systemctl", "loginctl"])
      await fs.writeFile(path.join(stubs, program), "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    return {
      unitFile: path.join(home, ".config", "systemd", "user", "runner.service"),
      env: proxyEnv({ HOME: home, XDG_CONFIG_HOME: path.join(home, ".config"), PATH: `${stubs}:/usr/bin:/bin` }),
    };
  }
  const execStart = (unit: string) => unit.split("\n").find((line) => line.startsWith("ExecStart=")) ?? "";

  test(
    "install carries a proxy without credentials into the unit, and refuses one with credentials before writing anything",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const { unitFile, env } = await serviceEnv(t);

      const plain = await runCli(
        ["service", "install", "--no-wait", ...runner.flags, "--proxy", "http://127.0.0.1:3128"],
        { env },
      );
      assert.equal(plain.code, ExitCode.OK, plain.all);
      const unit = await fs.readFile(unitFile, "utf8");
      assert.ok(execStart(unit).includes(`"--proxy" "http://127.0.0.1:3128"`), execStart(unit));

      const secret = "unit-S3cret";
      for (const [args, extraEnv, named] of [
        [["--proxy", `http://user:${secret}@127.0.0.1:3128`], {}, "--proxy"],
        [[], { RUNNER_PROXY: `http://user:${secret}@127.0.0.1:3128` }, "$RUNNER_PROXY"],
      ] as const) {
        const refused = await runCli(["service", "install", "--no-wait", ...runner.flags, ...args], {
          env: { ...env, ...extraEnv },
        });
        assert.equal(refused.code, ExitCode.USAGE, refused.all);
        assert.ok(refused.stderr.includes(`the proxy given by ${named} holds credentials`), refused.stderr);
        assert.match(refused.stderr, /put "proxy" in the config file/);
        assert.ok(!refused.all.includes(secret), refused.all);
        assert.equal(await fs.readFile(unitFile, "utf8"), unit, "the unit is left as it was");
      }
    },
  );

  test(
    "a proxy with credentials in the config file reaches the service through --config, not its command line",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const { unitFile, env } = await serviceEnv(t);
      const secret = "c0nfig-S3cret";
      const config = runner.flags[runner.flags.indexOf("--config") + 1]!;
      const settings = JSON.parse(await fs.readFile(config, "utf8")) as Record<string, unknown>;
      await fs.writeFile(config, JSON.stringify({ ...settings, proxy: `http://user:${secret}@127.0.0.1:3128` }));
      await fs.chmod(config, 0o600);

      const install = await runCli(["service", "install", "--no-wait", ...runner.flags], { env });
      assert.equal(install.code, ExitCode.OK, install.all);
      const unit = await fs.readFile(unitFile, "utf8");
      assert.ok(execStart(unit).includes(`"--config" "${config}"`), execStart(unit));
      assert.ok(!unit.includes(secret) && !install.all.includes(secret), unit);
    },
  );

  test(
    "install says that the service does not inherit this shell's proxy variables",
    { timeout: 60_000 },
    async (t) => {
      const plane = await startTestControlPlane(t);
      const runner = await registerRunner(t, plane);
      const { unitFile, env } = await serviceEnv(t);
      const install = await runCli(["service", "install", "--no-wait", ...runner.flags], {
        env: { ...env, HTTPS_PROXY: "http://127.0.0.1:3128", http_proxy: "http://127.0.0.1:3128" },
      });
      assert.equal(install.code, ExitCode.OK, install.all);
      assert.match(
        install.stdout,
        /! HTTPS_PROXY and http_proxy are set in this shell, but the service does not inherit its environment: install with --proxy <url>/,
      );
      assert.ok(!execStart(await fs.readFile(unitFile, "utf8")).includes("--proxy"));
    },
  );
});
