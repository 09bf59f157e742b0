// The transport rule: TLS (https/wss) for anything but loopback; plaintext to another host
// only with the loudly named --insecure-plaintext opt-in.
import { RunnerError } from "../errors.js";

export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  return host === "localhost" || host === "::1" || /^127(\.\d{1,3}){3}$/.test(host);
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
