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
    test(`a type nested 100,000 deep is an unknown type, not a stack overflow (${side} decoder)`, { timeout: 10_000 }, () => {
      const decoded = decode(deep(100_000));
      assert.equal(decoded.ok, false);
      assert.equal(!decoded.ok && decoded.problem, "unknown_type");
      assert.ok(!decoded.ok && decoded.detail.length < 200, "the detail names the type's kind, not its content");
    });

    test(`a 900 KB unknown type is named in a capped detail (${side} decoder)`, { timeout: 10_000 }, () => {
      const decoded = decode(JSON.stringify({ type: "x".repeat(900_000) }));
      assert.equal(!decoded.ok && decoded.problem, "unknown_type");
      assert.ok(!decoded.ok && decoded.detail.length < 2_000, `detail of ${!decoded.ok && decoded.detail.length} chars`);
    });
  }
});
