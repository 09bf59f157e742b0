import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { getProxyForUrl } from "proxy-from-env";
import {
  NO_PROXY,
  chooseProxy,
  exemptedByNoProxy,
  parseProxyUrl,
  proxyConfig,
  redactProxyUrl,
  type ProxyConfig,
} from "../../src/net/proxy.js";
import { RunnerError } from "../../src/errors.js";
import { resolveSettings } from "../../src/config/resolve.js";

const CP = "https://cp.example.com/api/v1/runners/verify";
const env = (vars: Record<string, string>, setting?: string): ProxyConfig => proxyConfig(setting, vars);
const chosen = (target: string, config: ProxyConfig) => chooseProxy(target, config)?.url.href ?? null;
const configError = (check: (error: RunnerError) => boolean) => (error: unknown) =>
  error instanceof RunnerError && error.code === "config_invalid" && check(error);

describe("which proxy carries a request to the control plane", () => {
  test("without the setting or any variable, the connection is direct", () => {
    assert.equal(chooseProxy(CP, env({})), null);
  });

  test("an https or wss target takes HTTPS_PROXY, an http or ws target HTTP_PROXY", () => {
    const config = env({ HTTPS_PROXY: "http://secure-proxy:3128", HTTP_PROXY: "http://plain-proxy:8080" });
    assert.equal(chosen("https://cp.example.com/x", config), "http://secure-proxy:3128/");
    assert.equal(chosen("wss://cp.example.com/x", config), "http://secure-proxy:3128/");
    assert.equal(chosen("http://cp.example.com/x", config), "http://plain-proxy:8080/");
    assert.equal(chosen("ws://cp.example.com/x", config), "http://plain-proxy:8080/");
  });

  test("an https target does not fall back to HTTP_PROXY", () => {
    assert.equal(chooseProxy(CP, env({ HTTP_PROXY: "http://plain-proxy:8080" })), null);
  });

  test("the lowercase variable wins over the uppercase one, and an empty one counts as unset", () => {
    assert.equal(chosen(CP, env({ https_proxy: "http://lower:1", HTTPS_PROXY: "http://upper:2" })), "http://lower:1/");
    assert.equal(chosen(CP, env({ https_proxy: "", HTTPS_PROXY: "http://upper:2" })), "http://upper:2/");
    assert.equal(chooseProxy(CP, env({ https_proxy: "http://lower:1" }))?.from, "https_proxy");
    assert.equal(chooseProxy(CP, env({ HTTPS_PROXY: "http://upper:2" }))?.from, "HTTPS_PROXY");
  });

  test("no_proxy wins over NO_PROXY the same way", () => {
    const config = env({ HTTPS_PROXY: "http://p:1", no_proxy: "other.example", NO_PROXY: "cp.example.com" });
    assert.equal(chosen(CP, config), "http://p:1/");
  });

  test("the proxy setting wins over every variable, NO_PROXY included", () => {
    const config = env({ HTTPS_PROXY: "http://from-env:1", NO_PROXY: "cp.example.com" }, "http://from-setting:3128");
    assert.equal(chosen(CP, config), "http://from-setting:3128/");
    assert.equal(chooseProxy(CP, config)?.from, "the proxy setting");
    assert.equal(chosen("http://127.0.0.1:8080", config), "http://from-setting:3128/");
  });

  test("the proxy setting off or none connects directly whatever the variables say", () => {
    for (const off of ["off", "none", "OFF", " None "]) {
      assert.equal(chooseProxy(CP, env({ HTTPS_PROXY: "http://from-env:1", https_proxy: "http://x:2" }, off)), null);
    }
    assert.equal(chooseProxy(CP, NO_PROXY), null);
  });

  test("a proxy without a scheme is an http:// proxy", () => {
    assert.equal(chosen(CP, env({ HTTPS_PROXY: "proxy.corp:3128" })), "http://proxy.corp:3128/");
  });

  test("an https:// proxy (TLS to the proxy) is accepted", () => {
    assert.equal(chosen(CP, env({ HTTPS_PROXY: "https://proxy.corp:8443" })), "https://proxy.corp:8443/");
  });
});

describe("NO_PROXY", () => {
  const exempt = (target: string, noProxy: string) => exemptedByNoProxy(new URL(target), noProxy);

  test("a bare name exempts exactly that host, without case", () => {
    assert.ok(exempt("https://cp.example.com/x", "cp.example.com"));
    assert.ok(exempt("https://CP.Example.COM/x", "cp.EXAMPLE.com"));
    assert.ok(!exempt("https://cp.example.com/x", "example.com"));
    assert.ok(!exempt("https://cp.example.com.evil/x", "cp.example.com"));
  });

  test("a leading dot or star exempts the hosts whose name ends with the rest", () => {
    assert.ok(exempt("https://cp.example.com/x", ".example.com"));
    assert.ok(exempt("https://cp.example.com/x", "*.example.com"));
    assert.ok(exempt("https://a.b.example.com/x", ".example.com"));
    assert.ok(!exempt("https://example.com/x", ".example.com"));
    assert.ok(!exempt("https://notexample.com/x", ".example.com"));
  });

  test("an entry with a port exempts only that port; the scheme's default port counts", () => {
    assert.ok(exempt("http://127.0.0.1:8080/x", "127.0.0.1:8080"));
    assert.ok(!exempt("http://127.0.0.1:9090/x", "127.0.0.1:8080"));
    assert.ok(exempt("https://cp.example.com/x", "cp.example.com:443"));
    assert.ok(exempt("wss://cp.example.com/x", "cp.example.com:443"));
    assert.ok(!exempt("https://cp.example.com/x", "cp.example.com:80"));
  });

  test("a star exempts every host, alone or among other entries", () => {
    assert.ok(exempt("https://cp.example.com/x", "*"));
    assert.ok(exempt("https://cp.example.com/x", "other.example, *"));
  });

  test("entries are separated by commas or white space, empty ones skipped", () => {
    assert.ok(exempt("https://cp.example.com/x", "a.example,,b.example cp.example.com"));
    assert.ok(exempt("https://cp.example.com/x", " a.example,\tcp.example.com "));
    assert.ok(!exempt("https://cp.example.com/x", " , ,"));
  });

  test("an IPv6 address is written in brackets", () => {
    assert.ok(exempt("http://[::1]:8080/x", "[::1]"));
    assert.ok(exempt("http://[::1]:8080/x", "[::1]:8080"));
  });

  test("the matcher agrees with proxy-from-env on every case here", () => {
    const targets = [
      "https://cp.example.com/x",
      "https://CP.example.com:8443/x",
      "http://127.0.0.1:8080/x",
      "http://localhost:80/x",
      "https://example.com/x",
      "http://[::1]:9000/x",
      "https://a.b.example.com/x",
    ];
    const values = [
      "cp.example.com",
      ".example.com",
      "*.example.com",
      "example.com",
      "127.0.0.1:8080",
      "127.0.0.1:9090",
      "localhost",
      "*",
      "a.example, cp.example.com:8443",
      "[::1]:9000",
      "cp.example.com:443 other",
      "EXAMPLE.COM",
      "",
    ];
    for (const target of targets) {
      for (const noProxy of values) {
        const ours = exemptedByNoProxy(new URL(target), noProxy);
        // proxy-from-env reads process.env, so it gets one for this synchronous call only.
        const theirs = withProcessEnv(
          { http_proxy: "http://p:1", https_proxy: "http://p:1", ws_proxy: "", no_proxy: noProxy },
          () => getProxyForUrl(target) === "",
        );
        assert.equal(ours, theirs, `${target} with NO_PROXY=${JSON.stringify(noProxy)}`);
      }
    }
  });
});

describe("a bad proxy URL", () => {
  const secret = "s3cr3t-Pa55";

  test("from a variable is config_invalid (exit 2), naming the variable and never its value", () => {
    for (const bad of [`socks5://user:${secret}@proxy:1080`, `http://user:${secret}@proxy:3128/path`, "http://"]) {
      assert.throws(
        () => chooseProxy(CP, env({ HTTPS_PROXY: bad })),
        configError(
          (e) => e.message.startsWith("HTTPS_PROXY is not a usable proxy URL") && !e.message.includes(secret),
        ),
        bad,
      );
    }
  });

  test("says what is wrong with it", () => {
    assert.equal(
      parseProxyUrl("socks5://proxy:1080"),
      "only http:// and https:// proxies are supported, not socks5://",
    );
    assert.equal(parseProxyUrl("http://proxy:3128/some/path"), "a proxy URL has no path, query or fragment");
    assert.equal(parseProxyUrl("http://proxy:99999"), "it is not a URL");
  });

  test("only the variable that applies is read: a bad HTTP_PROXY does not stop an https control plane", () => {
    assert.equal(chooseProxy(CP, env({ HTTP_PROXY: "socks5://proxy:1080" })), null);
  });

  test("in the setting is refused when the settings are read, named by its source and never repeated", () => {
    const bad = `socks5://user:${secret}@proxy:1080`;
    for (const [inputs, where] of [
      [{ flags: { proxy: bad }, env: {} }, "--proxy"],
      [{ flags: {}, env: { RUNNER_PROXY: bad } }, "$RUNNER_PROXY"],
      [{ flags: {}, env: {}, file: { proxy: bad }, fileName: "/etc/runner/config.json" }, '"proxy"'],
    ] as const) {
      assert.throws(
        () => resolveSettings(inputs),
        configError((e) => e.message.includes(where) && e.message.includes("socks5") && !e.message.includes(secret)),
        where,
      );
    }
  });

  test("a good setting and off are accepted as they are", () => {
    const resolved = resolveSettings({ flags: { proxy: "http://u:p@proxy:3128" }, env: { RUNNER_PROXY: "off" } });
    assert.equal(resolved.settings.proxy, "http://u:p@proxy:3128");
    assert.equal(resolveSettings({ flags: {}, env: { RUNNER_PROXY: "none" } }).settings.proxy, "none");
  });
});

test("a proxy's credentials are masked, its scheme, host and port kept", () => {
  assert.equal(redactProxyUrl(new URL("http://user:pa%40ss@proxy.corp:3128")), "http://***@proxy.corp:3128");
  assert.equal(redactProxyUrl(new URL("http://user@proxy.corp:3128")), "http://***@proxy.corp:3128");
  assert.equal(redactProxyUrl(new URL("https://proxy.corp")), "https://proxy.corp");
  const choice = chooseProxy(CP, env({ HTTPS_PROXY: "http://user:hunter2@proxy:3128" }));
  assert.equal(choice?.redacted, "http://***@proxy:3128");
  assert.equal(choice?.url.password, "hunter2");
});

/** Runs `fn` with process.env holding exactly `vars`' proxy variables; restores them before returning. */
function withProcessEnv<T>(vars: Record<string, string>, fn: () => T): T {
  const names = ["http_proxy", "https_proxy", "ws_proxy", "all_proxy", "no_proxy"].flatMap((n) => [n, n.toUpperCase()]);
  const saved = new Map(names.map((name) => [name, process.env[name]]));
  try {
    for (const name of names) delete process.env[name];
    Object.assign(process.env, vars);
    return fn();
  } finally {
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
}
