// The HTTP server's limits (PROTOCOL.md, "Limits"), sent past one by one over raw loopback
// sockets: headers that never end, a body that never comes, idle keep-alive sockets, more
// sockets than maxConnections, bodies over 64 KiB. Each test's timeouts are small (hundreds of
// milliseconds) so the server's own deadlines fire quickly, and every wait is for an event
// (an answer, a close), never a sleep.
import { test, describe, type TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { startTestControlPlane } from "../helpers/fixtures.js";
import type { ControlPlaneOptions } from "../../src/control-plane/control-plane.js";
import { onCleanup } from "../helpers/cleanup.js";

const TIMEOUT = { timeout: 15_000 };
const ADMIN = "Bearer adm_test-admin-token-0123456789";

/** A raw client socket: what it received, and a promise of the moment the server closed it. */
interface RawSocket {
  socket: net.Socket;
  connected: Promise<void>;
  /** Everything received, once the socket has closed. */
  closed: Promise<string>;
  isClosed(): boolean;
}

function rawSocket(t: TestContext, url: string, text = ""): RawSocket {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  onCleanup(t, () => socket.destroy());
  let received = "";
  let closed = false;
  socket.on("data", (data: Buffer) => (received += data.toString("latin1")));
  socket.on("error", () => undefined); // a reset by the server is a close like any other here
  const connected = new Promise<void>((resolve) => socket.once("connect", resolve));
  void connected.then(() => socket.write(text));
  return {
    socket,
    connected,
    closed: new Promise((resolve) =>
      socket.once("close", () => {
        closed = true;
        resolve(received);
      }),
    ),
    isClosed: () => closed,
  };
}

/** The first answer on a socket (status line and body), without waiting for the socket to close. */
function firstAnswer(raw: RawSocket): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    let text = "";
    const onData = (data: Buffer) => {
      text += data.toString("latin1");
      const end = text.indexOf("\r\n\r\n");
      if (end < 0) return;
      const length = Number(/content-length:\s*(\d+)/i.exec(text.slice(0, end))?.[1] ?? 0);
      if (text.length < end + 4 + length) return;
      raw.socket.off("data", onData);
      resolve({ status: Number(text.slice(9, 12)), body: text.slice(end + 4, end + 4 + length) });
    };
    raw.socket.on("data", onData);
    raw.socket.once("close", () => reject(new Error(`closed before an answer: ${JSON.stringify(text)}`)));
  });
}

async function controlPlane(t: TestContext, options: ControlPlaneOptions) {
  return (await startTestControlPlane(t, options)).cp;
}

async function health(url: string): Promise<number> {
  return (await fetch(`${url}/api/v1/health`)).status;
}

describe("the control plane's HTTP limits", () => {
  test(
    "sockets that never finish their headers get 408 and are closed at headersTimeoutMs, and /health answers meanwhile",
    TIMEOUT,
    async (t) => {
      // requestTimeoutMs far past it: a close before 9 s can only be the headers' timeout.
      const cp = await controlPlane(t, { headersTimeoutMs: 2000, requestTimeoutMs: 10_000 });
      const started = performance.now();
      const slow = Array.from({ length: 20 }, (_, i) =>
        rawSocket(t, cp.url, i % 2 === 0 ? "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " : ""),
      );
      await Promise.all(slow.map((raw) => raw.connected));
      assert.equal(await health(cp.url), 200);
      assert.equal(slow.filter((raw) => raw.isClosed()).length, 0, "/health answered while every slow socket was held");
      const answers = await Promise.all(slow.map((raw) => raw.closed));
      for (const answer of answers) assert.match(answer, /^HTTP\/1\.1 408 /);
      const elapsed = performance.now() - started;
      assert.ok(elapsed >= 2000 - 50, `not before headersTimeoutMs (${elapsed} ms)`);
      assert.ok(elapsed < 9000, `at headersTimeoutMs, not at requestTimeoutMs (${elapsed} ms)`);
    },
  );

  test("a register or admin request with a bad token is refused before its body is sent", TIMEOUT, async (t) => {
    const cp = await controlPlane(t, {});
    for (const [path, token, code] of [
      ["/api/v1/runners/register", "rgt_not-a-token", "registration_token_invalid"],
      ["/api/v1/admin/jobs", "adm_wrong-wrong-wrong-wrong", "unauthorized"],
    ] as const) {
      const raw = rawSocket(
        t,
        cp.url,
        `POST ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
          "Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n",
      );
      // Not one byte of the body is ever sent: the answer can only come from the headers.
      const answer = await firstAnswer(raw);
      assert.equal(answer.status, 401, path);
      assert.equal((JSON.parse(answer.body) as { error: { code: string } }).error.code, code);
    }
  });

  test("a body that never arrives is cut at requestTimeoutMs with 408", TIMEOUT, async (t) => {
    const cp = await controlPlane(t, { headersTimeoutMs: 300, requestTimeoutMs: 800 });
    const started = performance.now();
    const raw = rawSocket(
      t,
      cp.url,
      `POST /api/v1/admin/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: ${ADMIN}\r\nContent-Length: 100\r\n\r\n{"job":`,
    );
    assert.match(await raw.closed, /^HTTP\/1\.1 408 /);
    assert.ok(performance.now() - started >= 800 - 50, "not before requestTimeoutMs");
    assert.equal(await health(cp.url), 200);
  });

  test("an idle keep-alive socket is closed after keepAliveTimeoutMs", TIMEOUT, async (t) => {
    const cp = await controlPlane(t, { keepAliveTimeoutMs: 300 });
    const raw = rawSocket(t, cp.url, "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert.equal((await firstAnswer(raw)).status, 200);
    const answered = performance.now();
    assert.match(await raw.closed, /^HTTP\/1\.1 200 /);
    // Node's own default is 5 s: a close well before that is the setting's.
    const idle = performance.now() - answered;
    assert.ok(idle < 4000, `closed ${idle} ms after the answer`);
  });

  test(
    "past maxConnections a new socket is closed unanswered; when one goes, /health answers again",
    TIMEOUT,
    async (t) => {
      const cp = await controlPlane(t, { maxConnections: 3, headersTimeoutMs: 10_000, requestTimeoutMs: 10_000 });
      const held = Array.from({ length: 3 }, () => rawSocket(t, cp.url));
      await Promise.all(held.map((raw) => raw.connected));
      await waitForConnections(cp.httpServer, 3);
      const extra = rawSocket(t, cp.url, "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
      assert.equal(await extra.closed, "", "closed without an answer");
      held[0]!.socket.destroy();
      await waitForConnections(cp.httpServer, 2);
      assert.equal(await health(cp.url), 200);
    },
  );

  test("a body over 64 KiB is refused with 413, announced or streamed", TIMEOUT, async (t) => {
    const cp = await controlPlane(t, {});
    const announced = rawSocket(
      t,
      cp.url,
      `POST /api/v1/admin/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: ${ADMIN}\r\nContent-Length: ${10 * 1024 * 1024}\r\n\r\n`,
    );
    const first = await firstAnswer(announced);
    assert.equal(first.status, 413);
    assert.equal((JSON.parse(first.body) as { error: { code: string } }).error.code, "payload_too_large");

    const streamed = await fetch(`${cp.url}/api/v1/admin/jobs`, {
      method: "POST",
      headers: { authorization: ADMIN, "content-type": "application/json" },
      body: new ReadableStream({
        start(controller) {
          controller.enqueue(new TextEncoder().encode(`{"pad":"${"x".repeat(100 * 1024)}"}`));
          controller.close();
        },
      }),
      duplex: "half",
    } as RequestInit);
    assert.equal(streamed.status, 413);
    assert.equal(await health(cp.url), 200);
  });
});

/** Waits for the server's own count of open sockets (it learns of a close a moment after the client). */
async function waitForConnections(server: net.Server, count: number): Promise<void> {
  for (;;) {
    const open = await new Promise<number>((resolve, reject) =>
      server.getConnections((error, n) => (error ? reject(error) : resolve(n))),
    );
    if (open === count) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe("pages of the admin lists", () => {
  /** Follows nextCursor from the first page; returns every page's items. */
  async function walk<T>(url: string, key: string, limit: number): Promise<{ items: T[]; pages: number }> {
    const items: T[] = [];
    let after: string | null = null;
    let pages = 0;
    do {
      const query = new URLSearchParams({ limit: String(limit), ...(after === null ? {} : { after }) });
      const response = await fetch(`${url}${url.includes("?") ? "&" : "?"}${query}`, {
        headers: { authorization: ADMIN },
      });
      assert.equal(response.status, 200);
      const page = (await response.json()) as Record<string, unknown> & { nextCursor: string | null };
      items.push(...(page[key] as T[]));
      after = page.nextCursor;
      pages++;
    } while (after !== null);
    return { items, pages };
  }

  test(
    "jobs, runners, devices and a job's log are each walked page by page exactly once, in order",
    TIMEOUT,
    async (t) => {
      const { cp, admin } = await startTestControlPlane(t, {});
      const api = `${cp.url}/api/v1`;
      const jobIds: string[] = [];
      for (let i = 0; i < 23; i++)
        jobIds.push((await admin.submitJob({ job: { kind: "command", argv: ["true"], env: {} } })).job.jobId);
      const jobs = await walk<{ jobId: string }>(`${api}/admin/jobs`, "jobs", 5);
      assert.deepEqual(
        jobs.items.map((job) => job.jobId),
        jobIds,
      );
      assert.equal(jobs.pages, 5);
      const queued = await walk<{ jobId: string }>(`${api}/admin/jobs?status=queued`, "jobs", 10);
      assert.deepEqual(
        queued.items.map((job) => job.jobId),
        jobIds,
        "a filter and pages together",
      );

      const names: string[] = [];
      for (let i = 0; i < 12; i++) {
        const { token } = await admin.createRegistrationToken();
        const name = `r${String(i).padStart(2, "0")}`;
        const registered = await fetch(`${api}/runners/register`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({
            protocolVersion: 1,
            agentVersion: "0.1.0",
            name,
            host: { hostname: name, platform: "linux", arch: "x64", fingerprint: "b".repeat(64) },
          }),
        });
        assert.equal(registered.status, 201);
        names.push(name);
      }
      const runners = await walk<{ name: string; runnerId: string }>(`${api}/admin/runners`, "runners", 5);
      assert.deepEqual(
        runners.items.map((runner) => runner.name),
        names,
      );

      const [first, second] = runners.items;
      const device = (id: string) => ({
        id,
        kind: "usb",
        name: id,
        state: "online" as const,
        attributes: {},
        stale: false,
        fingerprint: `fingerprint-${id}`,
      });
      const ids = Array.from({ length: 9 }, (_, i) => `usb:${i}`);
      for (const runner of [first!, second!])
        await cp.store.devices.applyBatch(
          runner.runnerId,
          { type: "devices", batchId: "b", last: true, upserts: ids.map(device), removals: [] },
          new Date(),
          100,
        );
      const devices = await walk<{ runnerId: string; id: string }>(`${api}/admin/devices`, "devices", 4);
      const expected = [first!, second!]
        .map((runner) => runner.runnerId)
        .sort()
        .flatMap((runnerId) => ids.map((id) => `${runnerId}/${id}`));
      assert.deepEqual(
        devices.items.map((row) => `${row.runnerId}/${row.id}`),
        expected,
      );
      const own = await walk<{ id: string }>(`${api}/admin/runners/${first!.runnerId}/devices`, "devices", 4);
      assert.deepEqual(
        own.items.map((row) => row.id),
        ids,
      );

      const jobId = jobIds[0]!;
      await cp.store.jobs.claim(jobId, first!.runnerId, new Date(), new Date(Date.now() + 60_000));
      const limits = { maxBytes: 1 << 20, maxChunks: 1 << 20 };
      for (let seq = 0; seq < 17; seq++)
        await cp.store.jobs.insertLog(
          { jobId, attempt: 1 },
          first!.runnerId,
          { seq, stream: "stdout", data: `line ${seq}\n` },
          limits,
        );
      const logs = await walk<{ seq: number }>(`${api}/admin/jobs/${jobId}/logs`, "logs", 5);
      assert.deepEqual(
        logs.items.map((chunk) => chunk.seq),
        Array.from({ length: 17 }, (_, i) => i),
      );
      const head = (await (
        await fetch(`${api}/admin/jobs/${jobId}?limit=3`, { headers: { authorization: ADMIN } })
      ).json()) as { logs: unknown[]; logsNextCursor: string | null };
      assert.equal(head.logs.length, 3);
      assert.notEqual(head.logsNextCursor, null);
      assert.equal((await admin.getJob(jobId)).logs.length, 17, "the admin client follows the pages");

      // Chunks of 100 KiB: a page stops at LOG_PAGE_MAX_BYTES (4 MiB) well before its limit,
      // and the chunks are read in slices past which the page does not go.
      const bigJob = jobIds[1]!;
      await cp.store.jobs.claim(bigJob, first!.runnerId, new Date(), new Date(Date.now() + 60_000));
      const chunk = "x".repeat(100 * 1024);
      for (let seq = 0; seq < 150; seq++)
        await cp.store.jobs.insertLog(
          { jobId: bigJob, attempt: 1 },
          first!.runnerId,
          { seq, stream: "stdout", data: chunk },
          { maxBytes: 1 << 30, maxChunks: 1 << 20 },
        );
      const big = await walk<{ seq: number; data: string }>(`${api}/admin/jobs/${bigJob}/logs`, "logs", 1000);
      assert.deepEqual(
        big.items.map((c) => c.seq),
        Array.from({ length: 150 }, (_, i) => i),
      );
      assert.equal(big.pages, 4, "40 chunks of 100 KiB fit in 4 MiB: pages of 40, 40, 40 and 30");
    },
  );

  test("a bad limit or cursor is 400 bad_request naming the parameter", TIMEOUT, async (t) => {
    const { cp } = await startTestControlPlane(t, {});
    for (const [query, parameter] of [
      ["limit=0", "limit"],
      ["limit=1001", "limit"],
      ["limit=abc", "limit"],
      ["after=not-a-cursor", "after"],
    ] as const) {
      const response = await fetch(`${cp.url}/api/v1/admin/jobs?${query}`, { headers: { authorization: ADMIN } });
      assert.equal(response.status, 400, query);
      const body = (await response.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, "bad_request");
      assert.match(body.error.message, new RegExp(`^${parameter}: `));
    }
  });
});
