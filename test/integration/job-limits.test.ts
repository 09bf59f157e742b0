// The job limits hold on both sides of the wire: the reference control plane refuses, at
// submit, a job the runner would refuse, so it never hands out a job no runner can run.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { startTestControlPlane } from "../helpers/fixtures.js";
import { API_PREFIX } from "../../src/protocol/http.js";

const ADMIN = "adm_test-admin-token-0123456789";

describe("POST /admin/jobs and the runner's job limits", () => {
  let depth = 1;
  let deep: unknown = 1;
  for (; depth < 65; depth++) deep = [deep];
  const hostile: [string, unknown][] = [
    ["a NUL in argv[1]", { kind: "command", argv: ["echo", "a\u0000b"], env: {} }],
    ["a NUL in an env value", { kind: "command", argv: ["true"], env: { A: "\u0000" } }],
    ["an env name that is not a name", { kind: "command", argv: ["true"], env: { "A=B": "x" } }],
    ["a NUL in cwd", { kind: "command", argv: ["true"], env: {}, cwd: "/\u0000" }],
    ["an empty program", { kind: "command", argv: [""], env: {} }],
    ["a payload nested 65 deep", { kind: "module", handler: "h", payload: deep }],
  ];
  for (const [what, job] of hostile) {
    test(`a job with ${what} is refused with 400 bad_request, naming the field`, { timeout: 15_000 }, async (t) => {
      const plane = await startTestControlPlane(t);
      const response = await fetch(`${plane.cp.url.replace(/\/+$/, "")}${API_PREFIX}/admin/jobs`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({ job }),
      });
      const body = (await response.json()) as { error?: { code?: string; message?: string } };
      assert.equal(response.status, 400, JSON.stringify(body));
      assert.equal(body.error?.code, "bad_request");
      assert.match(body.error?.message ?? "", /job\.(argv|env|cwd|payload)/);
      assert.deepEqual((await plane.admin.listJobs()).length, 0, "nothing was queued");
    });
  }

  test("a payload nested exactly 64 deep is accepted", { timeout: 15_000 }, async (t) => {
    const plane = await startTestControlPlane(t);
    let payload: unknown = 1;
    for (let i = 1; i < 64; i++) payload = [payload];
    const { job } = await plane.admin.submitJob({ job: { kind: "module", handler: "h", payload } });
    assert.equal(job.status, "queued");
  });
});
