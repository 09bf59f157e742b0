// The reference control plane's HTTP API over real sockets on 127.0.0.1: registration with
// one-time tokens, verify/repair, admin API, error bodies, limits and persistence.
import { test, describe, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import {
  startControlPlane,
  DATABASE_FILE,
  type ControlPlane,
  type ControlPlaneOptions,
} from "../../src/control-plane/control-plane.js";
import { AdminClient, AdminRequestError } from "../../src/api-client/admin.js";
import Database from "better-sqlite3";
import { MIGRATIONS, SCHEMA_VERSION } from "../../src/control-plane/store/sqlite/engine.js";
import { createLogger } from "../../src/log/logger.js";
import { RunnerError } from "../../src/errors.js";
import {
  errorBodySchema,
  healthResponseSchema,
  registerResponseSchema,
  repairResponseSchema,
  verifyResponseSchema,
  type HostFacts,
  type RegisterRequest,
} from "../../src/protocol/http.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { onCleanup } from "../helpers/cleanup.js";

const TIMEOUT = { timeout: 10_000 };

// ---- helpers ----

interface Answer {
  status: number;
  headers: Headers;
  body: unknown;
}

interface Harness {
  cp: ControlPlane;
  admin: AdminClient;
}

async function startHarness(t: TestContext, options: ControlPlaneOptions = {}): Promise<Harness> {
  const cp = await startControlPlane({ logger: createLogger({ level: "silent" }), ...options });
  onCleanup(t, () => cp.close());
  assert.ok(cp.adminToken, "a fresh control plane hands out its admin token");
  return { cp, admin: new AdminClient(cp.url, cp.adminToken) };
}

function makeTempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "runner-cp-test-"));
  onCleanup(t, () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function hostFacts(seed: string): HostFacts {
  return {
    hostname: `host-${seed}`,
    platform: "linux",
    arch: "x64",
    fingerprint: createHash("sha256").update(seed).digest("hex"),
  };
}

async function call(
  cp: ControlPlane,
  method: string,
  path: string,
  options: { token?: string; body?: unknown; raw?: string } = {},
): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  let payload: string | undefined = options.raw;
  if (options.body !== undefined) payload = JSON.stringify(options.body);
  if (payload !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`${cp.url}/api/v1${path}`, { method, headers, body: payload });
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: text === "" ? undefined : JSON.parse(text) };
}

function registerBody(name: string, overrides: Partial<RegisterRequest> = {}): RegisterRequest {
  return {
    protocolVersion: PROTOCOL_VERSION,
    agentVersion: AGENT_VERSION,
    name,
    labels: ["linux", "x64"],
    host: hostFacts(name),
    ...overrides,
  };
}

function versions() {
  return { protocolVersion: PROTOCOL_VERSION, agentVersion: AGENT_VERSION };
}

interface Registered {
  runnerId: string;
  credential: string;
  host: HostFacts;
}

async function registerRunner(h: Harness, name: string, overrides: Partial<RegisterRequest> = {}): Promise<Registered> {
  const { token } = await h.admin.createRegistrationToken();
  const body = registerBody(name, overrides);
  const answer = await call(h.cp, "POST", "/runners/register", { token, body });
  assert.equal(answer.status, 201, JSON.stringify(answer.body));
  const registered = registerResponseSchema.parse(answer.body);
  return { runnerId: registered.runnerId, credential: registered.credential, host: body.host };
}

function verify(
  h: Harness,
  runner: Registered,
  host: HostFacts = runner.host,
  credential = runner.credential,
): Promise<Answer> {
  return call(h.cp, "POST", "/runners/verify", {
    token: credential,
    body: { ...versions(), runnerId: runner.runnerId, host },
  });
}

function repair(h: Harness, runner: Registered, host: HostFacts, credential = runner.credential): Promise<Answer> {
  return call(h.cp, "POST", "/runners/repair", {
    token: credential,
    body: { ...versions(), runnerId: runner.runnerId, host },
  });
}

/** Asserts an error answer: status, protocol error body, code; returns the message. */
function assertError(answer: Answer, status: number, code: string): string {
  assert.equal(answer.status, status, JSON.stringify(answer.body));
  const body = errorBodySchema.parse(answer.body);
  assert.equal(body.error.code, code);
  assert.ok(body.error.message.length > 0);
  return body.error.message;
}

/** Every file of a data dir (database, WAL, shared memory) as one latin1 string. */
function readAllBytes(dir: string): string {
  return readdirSync(dir)
    .map((file) => readFileSync(join(dir, file)).toString("latin1"))
    .join("\n");
}

// ---- tests ----

describe("health", () => {
  test("answers without auth with the protocol versions and the minimum agent version", TIMEOUT, async (t) => {
    const h = await startHarness(t, { minAgentVersion: "0.1.0" });
    const answer = await call(h.cp, "GET", "/health");
    assert.equal(answer.status, 200);
    assert.deepEqual(healthResponseSchema.parse(answer.body), {
      ok: true,
      protocolVersions: [PROTOCOL_VERSION],
      minAgentVersion: "0.1.0",
    });
    assert.match(h.cp.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  });

  test("answers HEAD like GET, without a body; another method is 405 allowing GET and HEAD", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const get = await fetch(`${h.cp.url}/api/v1/health`);
    const getBody = await get.text();
    const head = await fetch(`${h.cp.url}/api/v1/health`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), "");
    assert.equal(head.headers.get("content-type"), get.headers.get("content-type"));
    assert.equal(head.headers.get("content-length"), String(Buffer.byteLength(getBody)));
    const post = await call(h.cp, "POST", "/health");
    assertError(post, 405, "not_found");
    assert.equal(post.headers.get("allow"), "GET, HEAD");
  });
});

describe("registration", () => {
  test("a registration token registers a runner once and returns its credential", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const { token, tokenId, expiresAt } = await h.admin.createRegistrationToken(600);
    assert.match(token, /^rgt_[A-Za-z0-9_-]{43}$/);
    assert.ok(tokenId.length > 0);
    assert.ok(Math.abs(Date.parse(expiresAt) - (Date.now() + 600_000)) < 5000);

    const answer = await call(h.cp, "POST", "/runners/register", { token, body: registerBody("mac-mini-07") });
    assert.equal(answer.status, 201);
    const registered = registerResponseSchema.parse(answer.body);
    assert.match(registered.runnerId, /^rnr_[A-Za-z0-9]{24}$/);
    assert.match(registered.credential, /^rnc_[A-Za-z0-9_-]{43}$/);
    assert.equal(registered.name, "mac-mini-07");
    assert.deepEqual(registered.labels, ["linux", "x64"]);

    const runners = await h.admin.listRunners();
    assert.equal(runners.length, 1);
    assert.equal(runners[0]?.runnerId, registered.runnerId);
    assert.deepEqual(runners[0]?.host, hostFacts("mac-mini-07"));
    assert.equal(runners[0]?.revoked, false);

    const reused = await call(h.cp, "POST", "/runners/register", { token, body: registerBody("another") });
    assertError(reused, 401, "registration_token_invalid");
    assert.equal((await h.admin.listRunners()).length, 1);
  });

  test("two concurrent registrations with one token: exactly one succeeds", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const { token } = await h.admin.createRegistrationToken();
    const answers = await Promise.all(
      ["racer-a", "racer-b", "racer-c", "racer-d"].map((name) =>
        call(h.cp, "POST", "/runners/register", { token, body: registerBody(name) }),
      ),
    );
    const statuses = answers.map((a) => a.status).sort();
    assert.deepEqual(statuses, [201, 401, 401, 401]);
    assert.equal((await h.admin.listRunners()).length, 1);
  });

  test("two control planes on one database: one token still registers exactly one runner", TIMEOUT, async (t) => {
    const dataDir = makeTempDir(t);
    const first = await startHarness(t, { dataDir });
    const second = await startControlPlane({ dataDir, logger: createLogger({ level: "silent" }) });
    onCleanup(t, () => second.close());
    const { token } = await first.admin.createRegistrationToken();
    const answers = await Promise.all([
      call(first.cp, "POST", "/runners/register", { token, body: registerBody("left") }),
      call(second, "POST", "/runners/register", { token, body: registerBody("right") }),
    ]);
    assert.deepEqual(answers.map((a) => a.status).sort(), [201, 401]);
    assert.equal((await first.admin.listRunners()).length, 1);
  });

  test("an expired registration token is refused", TIMEOUT, async (t) => {
    let clock = new Date("2030-01-01T00:00:00Z");
    const h = await startHarness(t, { now: () => clock });
    const early = await h.admin.createRegistrationToken(60);
    const late = await h.admin.createRegistrationToken(60);
    assert.equal(late.expiresAt, "2030-01-01T00:01:00.000Z");

    clock = new Date("2030-01-01T00:00:59Z");
    assert.equal(
      (await call(h.cp, "POST", "/runners/register", { token: early.token, body: registerBody("in-time") })).status,
      201,
    );

    clock = new Date("2030-01-01T00:01:00Z");
    assertError(
      await call(h.cp, "POST", "/runners/register", { token: late.token, body: registerBody("too-late") }),
      401,
      "registration_token_invalid",
    );
  });

  test("an unknown or missing registration token is refused", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    assertError(
      await call(h.cp, "POST", "/runners/register", { token: "rgt_unknown", body: registerBody("x") }),
      401,
      "registration_token_invalid",
    );
    assertError(await call(h.cp, "POST", "/runners/register", { body: registerBody("x") }), 401, "unauthorized");
  });

  test(
    "a taken name is refused without consuming the token; replace=true replaces the old runner",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const old = await registerRunner(h, "builder");
      const { token } = await h.admin.createRegistrationToken();

      const refused = await call(h.cp, "POST", "/runners/register", { token, body: registerBody("builder") });
      assert.match(assertError(refused, 409, "name_taken"), /replace/);

      const replaced = await call(h.cp, "POST", "/runners/register", {
        token,
        body: registerBody("builder", { replace: true }),
      });
      assert.equal(replaced.status, 201, "the token survived the 409");
      const fresh = registerResponseSchema.parse(replaced.body);
      assert.notEqual(fresh.runnerId, old.runnerId);

      const runners = await h.admin.listRunners();
      assert.deepEqual(
        runners.map((r) => r.runnerId),
        [fresh.runnerId],
      );
      assertError(await verify(h, old), 404, "runner_not_found");
    },
  );
});

describe("verify and repair", () => {
  test("verify accepts a valid credential on its host and records when the runner was seen", TIMEOUT, async (t) => {
    let clock = new Date("2030-05-01T10:00:00Z");
    const h = await startHarness(t, { now: () => clock });
    const runner = await registerRunner(h, "verifier");
    clock = new Date("2030-05-01T11:00:00Z");
    const answer = await verify(h, runner);
    assert.equal(answer.status, 200);
    const body = verifyResponseSchema.parse(answer.body);
    assert.equal(body.runner.runnerId, runner.runnerId);
    assert.equal(body.runner.registeredAt, "2030-05-01T10:00:00.000Z");
    assert.equal(body.runner.lastSeenAt, "2030-05-01T11:00:00.000Z");
  });

  test("a wrong or missing credential is unauthorized", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const runner = await registerRunner(h, "a");
    const other = await registerRunner(h, "b");
    assertError(await verify(h, runner, runner.host, other.credential), 401, "unauthorized");
    assertError(await verify(h, runner, runner.host, "rnc_wrong"), 401, "unauthorized");
    const missing = await call(h.cp, "POST", "/runners/verify", {
      body: { ...versions(), runnerId: runner.runnerId, host: runner.host },
    });
    assertError(missing, 401, "unauthorized");
    assertError(await repair(h, runner, hostFacts("elsewhere"), other.credential), 401, "unauthorized");
  });

  test("a revoked credential gets credential_revoked from verify and repair", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const runner = await registerRunner(h, "revoked-one");
    const view = await h.admin.revokeRunner(runner.runnerId);
    assert.equal(view.revoked, true);
    assert.deepEqual(await h.admin.revokeRunner(runner.runnerId), view, "revoking twice changes nothing");
    assertError(await verify(h, runner), 401, "credential_revoked");
    assertError(await repair(h, runner, hostFacts("new-host")), 401, "credential_revoked");
    assert.equal((await h.admin.listRunners())[0]?.revoked, true);
  });

  test("a deleted runner gets runner_not_found", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const runner = await registerRunner(h, "deleted-one");
    await h.admin.deleteRunner(runner.runnerId);
    assertError(await verify(h, runner), 404, "runner_not_found");
    assertError(await repair(h, runner, runner.host), 404, "runner_not_found");
    assert.deepEqual(await h.admin.listRunners(), []);
  });

  test("unregister deletes the runner after the same checks as verify, whatever the host", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const runner = await registerRunner(h, "leaving");
    const other = await registerRunner(h, "staying");
    const unregister = (credential: string) =>
      call(h.cp, "POST", "/runners/unregister", {
        token: credential,
        body: { ...versions(), runnerId: runner.runnerId },
      });
    assertError(await unregister(other.credential), 401, "unauthorized");
    const answer = await unregister(runner.credential);
    assert.equal(answer.status, 200);
    assert.deepEqual(answer.body, { ok: true });
    assert.deepEqual(
      (await h.admin.listRunners()).map((r) => r.name),
      ["staying"],
    );
    assertError(await unregister(runner.credential), 404, "runner_not_found");
  });

  test("another host fingerprint gets 409 until repair re-binds the runner", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const runner = await registerRunner(h, "moved");
    const newHost = hostFacts("moved-to-new-disk");

    const mismatch = await verify(h, runner, newHost);
    assert.match(assertError(mismatch, 409, "host_fingerprint_mismatch"), /repair/);

    const repaired = await repair(h, runner, newHost);
    assert.equal(repaired.status, 200);
    const body = repairResponseSchema.parse(repaired.body);
    assert.equal(body.previousFingerprint, runner.host.fingerprint);
    assert.deepEqual(body.runner.host, newHost);

    assert.equal((await verify(h, runner, newHost)).status, 200);
    assertError(await verify(h, runner, runner.host), 409, "host_fingerprint_mismatch");
  });
});

describe("versions", () => {
  test("an unsupported protocol version gets 426 and does not consume the token", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const { token } = await h.admin.createRegistrationToken();
    const refused = await call(h.cp, "POST", "/runners/register", {
      token,
      body: registerBody("future", { protocolVersion: PROTOCOL_VERSION + 1 }),
    });
    assert.match(assertError(refused, 426, "upgrade_required"), /protocol version/);
    assert.equal((await call(h.cp, "POST", "/runners/register", { token, body: registerBody("future") })).status, 201);
  });

  test("an agent older than minAgentVersion gets 426 on register and verify", TIMEOUT, async (t) => {
    const h = await startHarness(t, { minAgentVersion: "2.0.0" });
    const { token } = await h.admin.createRegistrationToken();
    const old = await call(h.cp, "POST", "/runners/register", {
      token,
      body: registerBody("old", { agentVersion: "1.9.9" }),
    });
    assert.match(assertError(old, 426, "upgrade_required"), /1\.9\.9.*2\.0\.0/);

    const ok = await call(h.cp, "POST", "/runners/register", {
      token,
      body: registerBody("new", { agentVersion: "2.0.1" }),
    });
    const runner = registerResponseSchema.parse(ok.body);
    const staleVerify = await call(h.cp, "POST", "/runners/verify", {
      token: runner.credential,
      body: {
        protocolVersion: PROTOCOL_VERSION,
        agentVersion: "1.0.0",
        runnerId: runner.runnerId,
        host: hostFacts("new"),
      },
    });
    assertError(staleVerify, 426, "upgrade_required");
    // Each part counts by its leading digits (none: 0), a missing part is 0, a -suffix is ignored.
    const verifyAs = (agentVersion: string) =>
      call(h.cp, "POST", "/runners/verify", {
        token: runner.credential,
        body: { protocolVersion: PROTOCOL_VERSION, agentVersion, runnerId: runner.runnerId, host: hostFacts("new") },
      });
    for (const accepted of ["2", "2.0.0-rc.1", "2.0.0.0", "10.0.0", "2.1x"])
      assert.equal((await verifyAs(accepted)).status, 200, accepted);
    for (const refused of ["abc", "v2.0.0", "1.99.99", "0x2"])
      assertError(await verifyAs(refused), 426, "upgrade_required");
  });
});

describe("admin API", () => {
  test(
    "a missing or wrong admin token is unauthorized, and the client's error names status and code only",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      assertError(await call(h.cp, "GET", "/admin/runners"), 401, "unauthorized");
      assertError(await call(h.cp, "GET", "/admin/runners", { token: "adm_wrong" }), 401, "unauthorized");
      assertError(
        await call(h.cp, "POST", "/admin/registration-tokens", { token: "adm_wrong", body: {} }),
        401,
        "unauthorized",
      );

      const secret = "adm_this-is-not-the-admin-token";
      const wrongClient = new AdminClient(h.cp.url, secret);
      const error = await wrongClient.listRunners().then(
        () => assert.fail("expected a 401"),
        (e: unknown) => e,
      );
      assert.ok(error instanceof AdminRequestError);
      assert.equal(error.status, 401);
      assert.equal(error.apiCode, "unauthorized");
      assert.match(error.message, /401 unauthorized/);
      assert.ok(!error.message.includes(secret));
    },
  );

  test("revoke and delete of an unknown runner are 404 runner_not_found; a malformed id is 400", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const missing = "rnr_000000000000000000000000";
    await assert.rejects(
      h.admin.revokeRunner(missing),
      (e: unknown) => e instanceof AdminRequestError && e.status === 404 && e.apiCode === "runner_not_found",
    );
    await assert.rejects(h.admin.deleteRunner(missing), /404 runner_not_found/);
    assertError(
      await call(h.cp, "DELETE", "/admin/runners/not-an-id", { token: h.cp.adminToken! }),
      400,
      "bad_request",
    );
  });

  test("delete answers 204 with no body", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const runner = await registerRunner(h, "short-lived");
    const answer = await call(h.cp, "DELETE", `/admin/runners/${runner.runnerId}`, { token: h.cp.adminToken! });
    assert.equal(answer.status, 204);
    assert.equal(answer.body, undefined);
  });
});

describe("request errors", () => {
  test("invalid JSON is 400 bad_request", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    // A usable token: it is checked before the body is read (a bad one never gets that far).
    const { token } = await h.admin.createRegistrationToken();
    const answer = await call(h.cp, "POST", "/runners/register", { token, raw: "{not json" });
    assert.match(assertError(answer, 400, "bad_request"), /JSON/);
  });

  test("a schema failure names each bad field", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const { token } = await h.admin.createRegistrationToken();
    const body = { ...registerBody("ok"), name: "bad name!", host: { ...hostFacts("x"), fingerprint: "nope" } };
    const message = assertError(await call(h.cp, "POST", "/runners/register", { token, body }), 400, "bad_request");
    assert.match(message, /^name: /);
    assert.match(message, /host\.fingerprint: a sha256 hex digest/);

    const { host: _host, ...withoutHost } = registerBody("ok");
    assert.match(
      assertError(await call(h.cp, "POST", "/runners/register", { token, body: withoutHost }), 400, "bad_request"),
      /host: Required/,
    );

    const tokenRequest = await call(h.cp, "POST", "/admin/registration-tokens", {
      token: h.cp.adminToken!,
      body: { expiresInSeconds: -1 },
    });
    assert.match(assertError(tokenRequest, 400, "bad_request"), /expiresInSeconds: /);
  });

  test("a body over 64 KiB is 413 payload_too_large, with or without Content-Length", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const { token } = await h.admin.createRegistrationToken();
    const big = JSON.stringify({ ...registerBody("big"), padding: "x".repeat(100 * 1024) });
    assertError(await call(h.cp, "POST", "/runners/register", { token, raw: big }), 413, "payload_too_large");

    // Chunked: the limit must hold while reading, not only from the header.
    const chunked = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = httpRequest(
        `${h.cp.url}/api/v1/runners/register`,
        { method: "POST", headers: { authorization: `Bearer ${token}` } },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (chunk: string) => (text += chunk));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
        },
      );
      req.on("error", reject);
      for (let i = 0; i < 10; i++) req.write("x".repeat(10 * 1024));
      req.end();
    });
    assertError(
      { status: chunked.status, headers: new Headers(), body: JSON.parse(chunked.text) },
      413,
      "payload_too_large",
    );

    // The server still serves after refusing.
    assert.equal((await call(h.cp, "GET", "/health")).status, 200);
  });

  test("an unknown route is 404 not_found and a wrong method 405 with Allow", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    assertError(await call(h.cp, "GET", "/nope"), 404, "not_found");
    assertError(await call(h.cp, "GET", "/../health"), 404, "not_found");
    const wrongMethod = await call(h.cp, "GET", "/runners/register");
    assertError(wrongMethod, 405, "not_found");
    assert.equal(wrongMethod.headers.get("allow"), "POST");
    const root = await fetch(`${h.cp.url}/`);
    assert.equal(root.status, 404);
    assert.equal(errorBodySchema.parse(await root.json()).error.code, "not_found");
  });
});

describe("persistence and secrets at rest", () => {
  test("runners and the admin token survive a restart on the same data dir", TIMEOUT, async (t) => {
    const dataDir = makeTempDir(t);
    const first = await startHarness(t, { dataDir });
    const firstAdminToken = first.cp.adminToken!;
    assert.match(firstAdminToken, /^adm_[A-Za-z0-9_-]{43}$/);
    const runner = await registerRunner(first, "durable");
    await first.cp.close();

    const second = await startControlPlane({ dataDir, logger: createLogger({ level: "silent" }) });
    onCleanup(t, () => second.close());
    assert.equal(second.adminToken, null, "a stored admin token is never shown again");
    assert.equal(await second.store.schemaVersion(), SCHEMA_VERSION);
    const h: Harness = { cp: second, admin: new AdminClient(second.url, firstAdminToken) };
    assert.equal((await verify(h, runner)).status, 200);
    assert.deepEqual(
      (await h.admin.listRunners()).map((r) => r.name),
      ["durable"],
    );
    await second.close();

    // A given admin token replaces the stored one.
    const replacement = "adm_replacement-token-for-this-test";
    const third = await startControlPlane({
      dataDir,
      adminToken: replacement,
      logger: createLogger({ level: "silent" }),
    });
    onCleanup(t, () => third.close());
    assert.equal(third.adminToken, replacement);
    assertError(await call(third, "GET", "/admin/runners", { token: firstAdminToken }), 401, "unauthorized");
    assert.equal((await call(third, "GET", "/admin/runners", { token: replacement })).status, 200);
  });

  test(
    "a database made before runners could be paused is migrated: its runners come back unpaused, and can be paused",
    TIMEOUT,
    async (t) => {
      const dataDir = makeTempDir(t);
      const db = new Database(join(dataDir, DATABASE_FILE));
      for (const sql of MIGRATIONS.slice(0, 3)) db.exec(sql);
      db.pragma("user_version = 3");
      const id = "rnr_" + "A".repeat(24);
      const host = { hostname: "old-timer", platform: "linux", arch: "x64", fingerprint: "a".repeat(64) };
      db.prepare(
        "INSERT INTO runners (id, name, labels, host, credential_hash, registered_at) VALUES (?, ?, ?, ?, ?, ?)",
      ).run(id, "old-timer", '["linux"]', JSON.stringify(host), "0".repeat(64), Date.now());
      db.close();

      const h = await startHarness(t, { dataDir });
      assert.equal(await h.cp.store.schemaVersion(), SCHEMA_VERSION);
      const [runner] = await h.admin.listRunners();
      assert.deepEqual([runner?.runnerId, runner?.paused, runner?.pauseReason], [id, false, null]);
      assert.equal((await h.admin.pauseRunner(id, "migrated")).pauseReason, "migrated");
    },
  );

  test(
    "a database written by a newer runner is refused with a typed error that needs an operator, its schema version kept",
    TIMEOUT,
    async (t) => {
      const dataDir = makeTempDir(t);
      const db = new Database(join(dataDir, DATABASE_FILE));
      db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
      db.close();

      await assert.rejects(
        startControlPlane({ dataDir, logger: createLogger({ level: "silent" }) }),
        (error: unknown) =>
          error instanceof RunnerError &&
          error.code === "needs_operator" &&
          /schema version \d+, newer than this program knows .*upgrade runner/.test(error.message),
      );
      const after = new Database(join(dataDir, DATABASE_FILE));
      onCleanup(t, () => after.close());
      assert.equal(after.pragma("user_version", { simple: true }), SCHEMA_VERSION + 1);
    },
  );

  test("the database holds hashes only: no plain token, credential or admin token", TIMEOUT, async (t) => {
    const dataDir = makeTempDir(t);
    const h = await startHarness(t, { dataDir });
    const unused = await h.admin.createRegistrationToken();
    const runner = await registerRunner(h, "secretive");
    const secrets = [h.cp.adminToken!, unused.token, runner.credential];
    const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

    const check = (when: string) => {
      const bytes = readAllBytes(dataDir);
      for (const secret of secrets) {
        assert.ok(!bytes.includes(secret), `${when}: a secret is stored in plain text`);
        // Also proves we are reading the files that hold the data.
        assert.ok(bytes.includes(sha256(secret)), `${when}: the hash of a secret is missing`);
      }
    };
    check("while running");
    await h.cp.close();
    check("after close");

    if (process.platform !== "win32") {
      assert.equal(statSync(dataDir).mode & 0o777, 0o700);
      assert.equal(statSync(join(dataDir, DATABASE_FILE)).mode & 0o777, 0o600);
    }
  });

  test("request logs name method, path and status but never a token", TIMEOUT, async (t) => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(chunk.toString("utf8"));
        done();
      },
    });
    const h = await startHarness(t, { logger: createLogger({ level: "debug", destination }) });
    const runner = await registerRunner(h, "logged");
    await verify(h, runner);
    await call(h.cp, "GET", "/admin/runners", { token: "adm_wrong-token-in-header" });

    const log = lines.join("");
    for (const secret of [h.cp.adminToken!, runner.credential, "adm_wrong-token-in-header"]) {
      assert.ok(!log.includes(secret), "a secret reached the log");
    }
    assert.ok(!/rgt_/.test(log), "a registration token reached the log");
    const requests = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === "request");
    assert.ok(
      requests.some(
        (r) =>
          r.method === "POST" && r.path === "/api/v1/runners/verify" && r.status === 200 && typeof r.ms === "number",
      ),
    );
    assert.ok(requests.some((r) => r.path === "/api/v1/admin/runners" && r.status === 401));
  });
});
