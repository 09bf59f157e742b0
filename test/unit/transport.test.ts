import { test } from "node:test";
import assert from "node:assert/strict";
import { checkControlPlaneUrl, isLoopbackHost } from "../../src/config/transport.js";
import { RunnerError } from "../../src/errors.js";

test("https to any host is accepted and normalised", () => {
  assert.equal(checkControlPlaneUrl("https://cp.example.com/", false), "https://cp.example.com");
});

test("plain http is accepted on loopback addresses", () => {
  for (const url of ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9", "http://127.9.9.9"]) {
    assert.doesNotThrow(() => checkControlPlaneUrl(url, false), url);
  }
});

test("plain http to another host is refused unless the insecure opt-in is given", () => {
  assert.throws(
    () => checkControlPlaneUrl("http://10.0.0.5:8080", false),
    (e: unknown) => e instanceof RunnerError && /--insecure-plaintext/.test(e.hint ?? ""),
  );
  assert.equal(checkControlPlaneUrl("http://10.0.0.5:8080", true), "http://10.0.0.5:8080");
});

test("a URL with user info or another scheme is refused", () => {
  assert.throws(() => checkControlPlaneUrl("https://user:pw@cp.example.com", false), RunnerError);
  assert.throws(() => checkControlPlaneUrl("ftp://cp.example.com", false), RunnerError);
  assert.throws(() => checkControlPlaneUrl("not a url", false), RunnerError);
});

test("the loopback rule takes host names and IP literals, bracketed or not, and nothing that only looks like one", () => {
  for (const host of ["localhost", "LOCALHOST", "127.0.0.1", "127.9.9.9", "::1", "[::1]", "0:0:0:0:0:0:0:1"]) {
    assert.equal(isLoopbackHost(host), true, host);
  }
  for (const host of ["10.0.0.5", "127.0.0.1.example.com", "localhost.example.com", "::2", "128.0.0.1", ""]) {
    assert.equal(isLoopbackHost(host), false, host);
  }
});
