// The reverse-proxy examples in deploy/ run by the real servers: nginx (Debian's nginx-light)
// loads deploy/nginx/runner-control-plane.conf inside a minimal wrapping config, unprivileged
// style (its own prefix, pid file and temp dirs in a temp dir, error log on stderr; under root
// its workers run as `nobody`, nginx's default, with no `user` directive needed), and
// Caddy validates deploy/caddy/Caddyfile and runs it (admin endpoint off, plain HTTP). Absent binaries skip the tests with the reason;
// under CI=true they fail (.ci/run installs both), as with PostgreSQL (test/helpers/postgres.ts).
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import type { TestContext } from "node:test";
import { REPO_ROOT } from "./cli.js";
import { freeLoopbackPort } from "./ports.js";
import { onCleanup } from "./cleanup.js";

export const NGINX_EXAMPLE = path.join(REPO_ROOT, "deploy", "nginx", "runner-control-plane.conf");
export const CADDY_EXAMPLE = path.join(REPO_ROOT, "deploy", "caddy", "Caddyfile");

const PACKAGES = { nginx: "nginx-light", caddy: "caddy" } as const;
type Server = keyof typeof PACKAGES;

/** The server's binary: on PATH, or in /usr/sbin where Debian puts nginx (not on a user's PATH). */
export function findServer(name: Server): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(path.delimiter), "/usr/sbin", "/usr/bin"];
  return dirs
    .filter((dir) => dir !== "")
    .map((dir) => path.join(dir, name))
    .find((file) => existsSync(file));
}

/**
 * Whether this test may run the server: skips it (with the reason) where it is not installed;
 * under CI=true its absence is a failure.
 */
export function requireServer(t: TestContext, name: Server): boolean {
  if (findServer(name) !== undefined) return true;
  const reason = `${name} is not installed: apt-get install ${PACKAGES[name]}`;
  if (process.env.CI) assert.fail(`CI must provide ${name} (see .ci/run): ${reason}`);
  t.skip(reason);
  return false;
}

export interface Certificate {
  certificate: string;
  key: string;
}

/** A self-signed certificate for 127.0.0.1 (openssl), valid one day; trust it with NODE_EXTRA_CA_CERTS. */
export function selfSignedCertificate(dir: string): Certificate {
  const certificate = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  const made = spawnSync(
    "openssl",
    [
      ...["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"],
      ...["-keyout", key, "-out", certificate, "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
    ],
    { encoding: "utf8", timeout: 60_000 },
  );
  assert.equal(made.status, 0, `openssl could not make a certificate: ${made.stderr}`);
  return { certificate, key };
}

/** One textual substitution in the example; the example must still contain the text, exactly once. */
function substitute(file: string, text: string, from: string, to: string): string {
  const count = text.split(from).length - 1;
  assert.equal(count, 1, `${file} should contain \`${from}\` once (test/helpers/reverse-proxy.ts edits it)`);
  return text.replace(from, to);
}

/**
 * The nginx example with this machine's certificate and, when given, a loopback listening port
 * in place of 443 and the replicas' ports in place of its one upstream: nothing else changes.
 */
export function nginxSite(options: { tls: Certificate; listenPort?: number; upstreamPorts?: number[] }): string {
  let site = readFileSync(NGINX_EXAMPLE, "utf8");
  site = substitute(NGINX_EXAMPLE, site, "/etc/ssl/certs/cp.example.com.pem", options.tls.certificate);
  site = substitute(NGINX_EXAMPLE, site, "/etc/ssl/private/cp.example.com.key", options.tls.key);
  if (options.listenPort !== undefined)
    site = substitute(NGINX_EXAMPLE, site, "listen 443 ssl;", `listen 127.0.0.1:${options.listenPort} ssl;`);
  if (options.upstreamPorts !== undefined)
    site = substitute(
      NGINX_EXAMPLE,
      site,
      "server 127.0.0.1:8080;",
      options.upstreamPorts.map((port) => `server 127.0.0.1:${port};`).join("\n    "),
    );
  return site;
}

/**
 * Writes the site and the minimal nginx.conf that includes it (as /etc/nginx/nginx.conf's http
 * block would) into dir; returns the nginx.conf path. Temp paths go to dir, as the defaults
 * (/var/lib/nginx) are root's.
 */
export function writeNginxConfig(dir: string, site: string): string {
  // Run as root, nginx's workers drop to `nobody` (its default `user`): they must be able to
  // reach the temp dirs the master makes for them in dir (mkdtemp's 0700 would stop them).
  if (process.getuid?.() === 0) chmodSync(dir, 0o711);
  const sitePath = path.join(dir, "runner-control-plane.conf");
  writeFileSync(sitePath, site);
  const temp = (name: string) => `${name}_temp_path ${path.join(dir, name)};`;
  const conf = [
    "worker_processes 1;",
    "events { worker_connections 256; }",
    "http {",
    "  access_log off;",
    ...["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((name) => `  ${temp(name)}`),
    `  include ${sitePath};`,
    "}",
    "",
  ].join("\n");
  const confPath = path.join(dir, "nginx.conf");
  writeFileSync(confPath, conf);
  return confPath;
}

/** nginx's command line for a config in dir: its own prefix, pid file and stderr log. */
function nginxArgs(dir: string, confPath: string, extra = ""): string[] {
  return ["-p", dir, "-c", confPath, "-g", `${extra}pid ${path.join(dir, "nginx.pid")}; error_log stderr;`];
}

/** `nginx -t` on the config: its exit status and what it printed. */
export function checkNginxConfig(dir: string, confPath: string): { status: number | null; output: string } {
  const result = spawnSync(findServer("nginx")!, ["-t", ...nginxArgs(dir, confPath)], {
    encoding: "utf8",
    timeout: 30_000,
  });
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

/** Caddy's environment: HOME (where it keeps certificates and state) in dir. */
function caddyEnv(dir: string): NodeJS.ProcessEnv {
  const home = path.join(dir, "caddy-home");
  mkdirSync(home, { recursive: true });
  return { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, XDG_DATA_HOME: home, XDG_CONFIG_HOME: home };
}

/** `caddy validate` on a Caddyfile, with HOME in dir (Caddy's storage stays out of the real one). */
export function validateCaddyfile(dir: string, file: string): { status: number | null; output: string } {
  const result = spawnSync(findServer("caddy")!, ["validate", "--adapter", "caddyfile", "--config", file], {
    encoding: "utf8",
    timeout: 60_000,
    env: caddyEnv(dir),
  });
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

export interface RunningServer {
  /** http(s)://127.0.0.1:<port>: the one URL the runners are given. */
  url: string;
  child: ChildProcess;
  output: () => string;
}

/** Resolves once something accepts TCP connections on the loopback port, or rejects at the deadline. */
async function accepting(name: Server, port: number, child: ChildProcess, output: () => string): Promise<void> {
  const timeoutMs = 30_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`${name} exited (${child.exitCode ?? child.signalCode}):\n${output()}`);
    const connected = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.once("connect", () => (socket.destroy(), resolve(true)));
      socket.once("error", () => resolve(false));
    });
    if (connected) return;
    if (Date.now() > deadline)
      throw new Error(`${name} did not listen on ${port} within ${timeoutMs} ms:\n${output()}`);
    // Neither server says when it is up: a refused connect is retried shortly.
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * The server in the foreground, resolved once it accepts connections on the port; stopped
 * with SIGTERM (nginx's master takes its workers down with it, where a SIGKILL would leave
 * them behind) after the test, or when this process exits.
 */
async function runServer(
  t: TestContext,
  name: Server,
  args: string[],
  port: number,
  url: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<RunningServer> {
  const child = spawn(findServer(name)!, args, { stdio: ["ignore", "pipe", "pipe"], env });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
  child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stopAtExit = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
  };
  process.once("exit", stopAtExit);
  onCleanup(t, async () => {
    process.off("exit", stopAtExit);
    stopAtExit();
    await exited;
  });
  await accepting(name, port, child, () => output);
  return { url, child, output: () => output };
}

/** nginx with the example in front of the replicas' loopback ports, TLS with the given certificate. */
export async function startNginx(
  t: TestContext,
  dir: string,
  tls: Certificate,
  upstreamPorts: number[],
): Promise<RunningServer> {
  const listenPort = await freeLoopbackPort();
  const confPath = writeNginxConfig(dir, nginxSite({ tls, listenPort, upstreamPorts }));
  const args = nginxArgs(dir, confPath, "daemon off; ");
  return runServer(t, "nginx", args, listenPort, `https://127.0.0.1:${listenPort}`);
}

/**
 * Caddy with the example in front of a control plane's loopback port, serving plain HTTP on
 * a loopback port of its own in place of the example's TLS site (automatic TLS needs a real
 * domain), its admin endpoint off (it would take port 2019), its storage in dir.
 */
export async function startCaddy(t: TestContext, dir: string, upstreamPort: number): Promise<RunningServer> {
  const listenPort = await freeLoopbackPort();
  let caddyfile = readFileSync(CADDY_EXAMPLE, "utf8");
  caddyfile = substitute(CADDY_EXAMPLE, caddyfile, "cp.example.com {", `http://127.0.0.1:${listenPort} {`);
  caddyfile = substitute(
    CADDY_EXAMPLE,
    caddyfile,
    "reverse_proxy 127.0.0.1:8080 {",
    `reverse_proxy 127.0.0.1:${upstreamPort} {`,
  );
  const file = path.join(dir, "Caddyfile");
  writeFileSync(file, `{\n\tadmin off\n}\n\n${caddyfile}`);
  const args = ["run", "--adapter", "caddyfile", "--config", file];
  return runServer(t, "caddy", args, listenPort, `http://127.0.0.1:${listenPort}`, caddyEnv(dir));
}
