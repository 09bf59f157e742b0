// The shared decoder meets frames built to hurt it: a `type` nested far deeper than any
// message, or one that is huge. Both peers decode through it, so a throw here would take
// down the daemon or the control plane (seen in the fault suite's fuzz run).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { decodeControlMessage, decodeRunnerMessage } from "../../src/protocol/channel.js";

const deep = (depth: number) => `{"type":${"[".repeat(depth)}${"]".repeat(depth)}}`;

describe("decoding hostile frames", () => {
  for (const [side, decode] of [
    ["runner", decodeRunnerMessage],
    ["control plane", decodeControlMessage],
  ] as const) {
    test(
      `a type nested 100,000 deep is an unknown type, not a stack overflow (${side} decoder)`,
      { timeout: 10_000 },
      () => {
        const decoded = decode(deep(100_000));
        assert.equal(decoded.ok, false);
        assert.equal(!decoded.ok && decoded.problem, "unknown_type");
        assert.ok(!decoded.ok && decoded.detail.length < 200, "the detail names the type's kind, not its content");
      },
    );

    test(`a 900 KB unknown type is named in a capped detail (${side} decoder)`, { timeout: 10_000 }, () => {
      const decoded = decode(JSON.stringify({ type: "x".repeat(900_000) }));
      assert.equal(!decoded.ok && decoded.problem, "unknown_type");
      assert.ok(
        !decoded.ok && decoded.detail.length < 2_000,
        `detail of ${!decoded.ok && decoded.detail.length} chars`,
      );
    });
  }
});

describe("an assign that breaks the schema outside its job", () => {
  const base = {
    type: "assign",
    jobId: "j1",
    attempt: 2,
    job: { kind: "command", argv: ["true"] },
    timeoutMs: 1000,
    leaseExpiresAt: "2026-01-01T00:00:00Z",
  };

  for (const [what, broken] of [
    ["a negative timeoutMs", { timeoutMs: -5 }],
    ["a cancelGraceMs out of range", { cancelGraceMs: 10 ** 9 }],
    ["no leaseExpiresAt", { leaseExpiresAt: undefined }],
  ] as const) {
    test(
      `with ${what}, decodes as an unusable job whose reason names the field, so the runner can fail it at once`,
      { timeout: 10_000 },
      () => {
        const decoded = decodeControlMessage(JSON.stringify({ ...base, ...broken }));
        assert.ok(decoded.ok, "a usable job reference is answered, not dropped");
        const message = decoded.message;
        assert.equal(message.type, "assign");
        if (message.type !== "assign") return;
        assert.deepEqual([message.jobId, message.attempt], ["j1", 2]);
        assert.equal(message.job.kind, "unusable");
        const field = Object.keys(broken)[0]!;
        assert.match(
          message.job.kind === "unusable" ? message.job.problem : "",
          new RegExp(`invalid assignment: .*${field}`),
        );
      },
    );
  }

  test(
    "without a usable job reference, it stays an invalid frame (there is nothing to answer)",
    { timeout: 10_000 },
    () => {
      const decoded = decodeControlMessage(JSON.stringify({ ...base, attempt: 0, timeoutMs: -5 }));
      assert.equal(!decoded.ok && decoded.problem, "invalid");
    },
  );
});

describe("a hello whose agentVersion is out of bounds", () => {
  const hello = (agentVersion: string) =>
    JSON.stringify({
      type: "hello",
      protocolVersion: 1,
      agentVersion,
      runnerId: "rnr_0123456789abcdef",
      capacity: 1,
      running: [],
      pendingResults: [],
    });

  test("1 to 64 characters is a hello; empty or 65 is invalid, as on the HTTP API", { timeout: 10_000 }, () => {
    assert.equal(decodeRunnerMessage(hello("x".repeat(64))).ok, true);
    for (const agentVersion of ["", "x".repeat(65)]) {
      const decoded = decodeRunnerMessage(hello(agentVersion));
      assert.equal(!decoded.ok && decoded.problem, "invalid", `agentVersion of ${agentVersion.length} chars`);
      assert.match(!decoded.ok ? decoded.detail : "", /agentVersion/);
    }
  });
});
