// The transport rule: TLS (https/wss) for anything but loopback; plaintext to another host
// only with the loudly named --insecure-plaintext opt-in.
import { isIP } from "node:net";
import { RunnerError } from "../errors.js";

/**
 * The loopback rule, for every place that allows plain HTTP only on this machine: the runner's
 * control-plane URL, and the reference control plane's listen address. A host name, or an IP
 * literal with or without its URL brackets.
 */
export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return host === "::1" || host === "0:0:0:0:0:0:0:1";
}

/** Checks a control-plane URL and returns it normalised (no trailing slash). */
export function checkControlPlaneUrl(raw: string, allowPlaintext: boolean): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new RunnerError("usage", `"${raw}" is not a URL (expected e.g. https://cp.example.com)`);
  }
  if (url.username || url.password) throw new RunnerError("usage", "the control plane URL must not carry credentials");
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new RunnerError(
      "usage",
      `the control plane URL must start with https:// (or http:// on loopback), not ${url.protocol}//`,
    );
  }
  if (url.protocol === "http:" && !isLoopbackHost(url.hostname) && !allowPlaintext) {
    throw new RunnerError(
      "usage",
      `refusing plain http:// to ${url.hostname}: the credential would cross the network unencrypted`,
      {
        hint: "use https://, or pass --insecure-plaintext if you really mean it",
      },
    );
  }
  return url.origin + url.pathname.replace(/\/+$/, "");
}
