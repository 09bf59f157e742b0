// Which proxy, if any, carries a request to the control plane: the `proxy` setting, else the
// usual environment variables (HTTPS_PROXY, HTTP_PROXY, NO_PROXY and their lowercase forms).
// Pure: the environment is an input, read once by the caller (cli/context.ts), so the decision
// is the same for the HTTP API and for the WebSocket, and tests pass any environment.
//
// The NO_PROXY rules are those of proxy-from-env and undici's EnvHttpProxyAgent (the Node
// ecosystem's). proxy-from-env itself is not called: it reads process.env directly (the
// environment could not be an input), it looks up `ws_proxy` for a WebSocket URL instead of
// HTTP(S)_PROXY, and it cannot say which variable a proxy came from, which an error about a bad
// value must name. test/unit/proxy.test.ts checks this matcher against it, case by case.
import { RunnerError } from "../errors.js";

/** One environment variable as it was found: its name (for messages) and its value. */
export interface ProxyVariable {
  name: string;
  value: string;
}

/** Everything the decision depends on, apart from the target. */
export interface ProxyConfig {
  /**
   * The `proxy` setting: a proxy URL, or "off"/"none" (no proxy, whatever the environment
   * says); undefined when not set, and then the environment decides.
   */
  setting: string | undefined;
  /** The proxy for https:// and wss:// targets: https_proxy, else HTTPS_PROXY. */
  https: ProxyVariable | null;
  /** The proxy for http:// and ws:// targets: http_proxy, else HTTP_PROXY. */
  http: ProxyVariable | null;
  /** no_proxy, else NO_PROXY. */
  noProxy: ProxyVariable | null;
}

/** No proxy at all, whatever the environment holds (tests and tools that talk to loopback). */
export const NO_PROXY: ProxyConfig = { setting: "off", https: null, http: null, noProxy: null };

/** The proxy chosen for one target. */
export interface ProxyChoice {
  /** The proxy's URL, credentials included: only for the agent that connects to it. */
  url: URL;
  /** The URL with any credentials masked: the only form that may reach a log, an error or status output. */
  redacted: string;
  /** Where it came from: "the proxy setting" or the environment variable's name. */
  from: string;
}

/** The proxy setting's values that turn proxies off. */
const OFF_VALUES = ["off", "none"];

/**
 * Picks the proxy variables out of an environment, lowercase before uppercase (as curl, wget,
 * proxy-from-env and undici do); an empty value counts as unset.
 */
export function proxyConfig(setting: string | undefined, env: Record<string, string | undefined>): ProxyConfig {
  const pick = (name: string): ProxyVariable | null => {
    for (const candidate of [name.toLowerCase(), name.toUpperCase()]) {
      const value = env[candidate]?.trim();
      if (value) return { name: candidate, value };
    }
    return null;
  };
  return { setting, https: pick("https_proxy"), http: pick("http_proxy"), noProxy: pick("no_proxy") };
}

/** Whether a value of the proxy setting turns proxies off. */
export function isProxyOff(value: string): boolean {
  return OFF_VALUES.includes(value.trim().toLowerCase());
}

/**
 * The proxy for a request to `target` (an http(s):// or ws(s):// URL), or null for a direct
 * connection. The setting wins over the environment: a URL is used for every target (NO_PROXY
 * does not apply to it), "off" means direct. Without the setting, the target's scheme picks the
 * variable, and NO_PROXY may exempt the target. Throws RunnerError `config_invalid` (exit 2),
 * naming the setting or the variable and never its value, when the proxy that applies is not a
 * usable proxy URL.
 */
export function chooseProxy(target: string | URL, config: ProxyConfig): ProxyChoice | null {
  if (config.setting !== undefined) {
    if (isProxyOff(config.setting)) return null;
    return choice(config.setting, "the proxy setting");
  }
  const url = new URL(target);
  const secure = url.protocol === "https:" || url.protocol === "wss:";
  const variable = secure ? config.https : config.http;
  if (variable === null) return null;
  if (config.noProxy !== null && exemptedByNoProxy(url, config.noProxy.value)) return null;
  return choice(variable.value, variable.name);
}

function choice(raw: string, from: string): ProxyChoice {
  const parsed = parseProxyUrl(raw);
  if (typeof parsed === "string") {
    throw new RunnerError("config_invalid", `${from} is not a usable proxy URL: ${parsed}`, {
      hint: "expected http://host:port or http://user:password@host:port (https:// for a TLS proxy); --proxy off ignores the proxy variables",
    });
  }
  return { url: parsed, redacted: redactProxyUrl(parsed), from };
}

/**
 * A proxy URL, or what is wrong with it (in words that never repeat the value: it may hold a
 * password). Without a scheme, http:// is meant (as curl takes it).
 */
export function parseProxyUrl(raw: string): URL | string {
  const text = raw.trim();
  let url: URL;
  try {
    url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`);
  } catch {
    return "it is not a URL";
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    return `only http:// and https:// proxies are supported, not ${url.protocol}//`;
  if (url.hostname === "") return "it names no host";
  if ((url.pathname !== "/" && url.pathname !== "") || url.search !== "" || url.hash !== "")
    return "a proxy URL has no path, query or fragment";
  return url;
}

/** The proxy URL as it may be shown: scheme, host and port, with `***` for any credentials. */
export function redactProxyUrl(url: URL): string {
  const credentials = url.username !== "" || url.password !== "" ? "***@" : "";
  return `${url.protocol}//${credentials}${url.host}`;
}

const DEFAULT_PORTS: Record<string, number> = { "http:": 80, "ws:": 80, "https:": 443, "wss:": 443 };

/**
 * NO_PROXY, as proxy-from-env and undici read it: entries separated by commas or white space;
 * `*` exempts every host; an entry may end in `:port` (then only that port is exempt); an entry
 * starting with `.` or `*` exempts the hosts whose name ends with the rest (`.example.com` and
 * `*.example.com` exempt `cp.example.com`, not `example.com`); any other entry exempts exactly
 * that host (`example.com` does not exempt `cp.example.com`). Names compare without case; an
 * IPv6 address is written in brackets (`[::1]`); no CIDR ranges.
 */
export function exemptedByNoProxy(target: URL, noProxy: string): boolean {
  const hostname = target.host.replace(/:\d*$/, "").toLowerCase();
  const port = Number.parseInt(target.port, 10) || DEFAULT_PORTS[target.protocol] || 0;
  const value = noProxy.toLowerCase();
  if (value.trim() === "*") return true;
  return value.split(/[,\s]/).some((entry) => {
    if (entry === "") return false;
    const withPort = /^(.+):(\d+)$/.exec(entry);
    const entryHost = withPort ? withPort[1]! : entry;
    const entryPort = withPort ? Number.parseInt(withPort[2]!, 10) : 0;
    if (entryPort !== 0 && entryPort !== port) return false;
    if (!/^[.*]/.test(entryHost)) return hostname === entryHost;
    return hostname.endsWith(entryHost.replace(/^\*/, ""));
  });
}
