// The reverse-proxy examples in deploy/ (README, "Control plane limits and a reverse proxy"),
// checked against the numbers the control plane itself uses, so that neither can drift: an
// idle channel must outlive the control plane's own silence limit at the proxy, bodies the
// control plane accepts must pass, and the channel's upgrade must be forwarded. These read
// the files; test/integration/deploy-servers.test.ts has the real nginx and Caddy load them.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { CONTROL_PLANE_SETTINGS, MAX_BODY_BYTES } from "../../src/control-plane/control-plane.js";
import { IDLE_HEARTBEATS } from "../../src/control-plane/channel/endpoint.js";
import { REPO_ROOT } from "../helpers/cli.js";

/** How long the control plane lets a channel be silent before dropping it, at the default heartbeat. */
const CHANNEL_SILENCE_MS = IDLE_HEARTBEATS * CONTROL_PLANE_SETTINGS.heartbeatIntervalMs.default;

function read(file: string): string {
  return readFileSync(path.join(REPO_ROOT, "deploy", file), "utf8");
}

/** "120s", "5m", "128k", "128KB" → milliseconds or bytes. */
function toNumber(value: string): number {
  const match = /^(\d+)(ms|s|m|h|k|KB|MB|m?)$/.exec(value.trim());
  assert.ok(match, `cannot read ${value}`);
  const n = Number(match[1]);
  const unit = match[2];
  const scale: Record<string, number> = {
    ms: 1,
    s: 1000,
    m: 60_000,
    h: 3_600_000,
    k: 1024,
    KB: 1000,
    MB: 1_000_000,
    "": 1,
  };
  return n * (scale[unit ?? ""] ?? Number.NaN);
}

/** The value of every `name value;` (nginx) or `name value` (Caddy) directive in a text. */
function directives(text: string, name: string): string[] {
  const pattern = new RegExp(`^\\s*${name}\\s+([^;\\s]+)`, "gm");
  return [...text.matchAll(pattern)].map((match) => match[1] ?? "");
}

describe("the nginx example", () => {
  const conf = read("nginx/runner-control-plane.conf");
  const channel = /location = \/api\/v1\/channel \{([\s\S]*?)\n {4}\}/.exec(conf)?.[1] ?? "";

  test("forwards the channel's WebSocket upgrade over HTTP/1.1", () => {
    assert.notEqual(channel, "", "a location for /api/v1/channel");
    assert.match(channel, /proxy_http_version 1\.1;/);
    assert.match(channel, /proxy_set_header Upgrade \$http_upgrade;/);
    assert.match(channel, /proxy_set_header Connection \$runner_connection_upgrade;/);
    assert.match(conf, /map \$http_upgrade \$runner_connection_upgrade \{/);
  });

  test("keeps an idle channel open longer than the control plane's silence limit", () => {
    for (const name of ["proxy_read_timeout", "proxy_send_timeout"]) {
      const [value] = directives(channel, name);
      assert.ok(value !== undefined, `${name} is set for the channel`);
      assert.ok(toNumber(value) > CHANNEL_SILENCE_MS, `${name} ${value} > ${CHANNEL_SILENCE_MS} ms`);
    }
  });

  test("lets through every body the control plane accepts", () => {
    const [size] = directives(conf, "client_max_body_size");
    assert.ok(size !== undefined && toNumber(size) >= MAX_BODY_BYTES, `client_max_body_size ${size}`);
  });
});

describe("the Caddy example", () => {
  const caddyfile = read("caddy/Caddyfile");

  test("keeps an idle channel open longer than the control plane's silence limit", () => {
    for (const name of ["read_timeout", "write_timeout"]) {
      const [value] = directives(caddyfile, name);
      assert.ok(value !== undefined, `${name} is set`);
      assert.ok(toNumber(value) > CHANNEL_SILENCE_MS, `${name} ${value} > ${CHANNEL_SILENCE_MS} ms`);
    }
  });

  test("lets through every body the control plane accepts", () => {
    const [size] = directives(caddyfile, "max_size");
    assert.ok(size !== undefined && toNumber(size) >= MAX_BODY_BYTES, `max_size ${size}`);
  });
});
