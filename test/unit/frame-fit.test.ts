// Sizing frames to the limit in force, on random text: the encoded size is computed exactly,
// every log piece fits, and the pieces put together are the original text.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { encodedStringBytes, fitRejectFrame, fitResultFrame, splitLogData } from "../../src/channel/frame-fit.js";
import {
  decodeRunnerMessage,
  encode,
  withBoundedFields,
  jobResultSchema,
  type JobResult,
} from "../../src/protocol/channel.js";

/** A deterministic generator (mulberry32), so that a failure can be replayed. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** Text mixing ASCII, quotes, control characters, 2-, 3- and 4-byte characters and lone surrogates. */
function randomText(next: () => number, length: number): string {
  const pool = [
    "a",
    "Z",
    " ",
    '"',
    "\\",
    "\n",
    "\t",
    "\u0000",
    "\u0001",
    "\u001f",
    "\u007f",
    "é",
    "€",
    "\u2028",
    "😀",
    "\ud800",
    "\udfff",
    "\ufffd",
  ];
  let text = "";
  for (let i = 0; i < length; i++) text += pool[Math.floor(next() * pool.length)];
  return text;
}

describe("frame sizing", () => {
  test("the encoded size of a string is what JSON.stringify makes of it in UTF-8", () => {
    const next = random(1);
    for (let i = 0; i < 500; i++) {
      const text = randomText(next, Math.floor(next() * 200));
      assert.equal(encodedStringBytes(text), Buffer.byteLength(JSON.stringify(text)) - 2, JSON.stringify(text));
    }
  });

  test("every piece of a split chunk fits the limit with any seq, and the pieces join to the chunk", () => {
    const next = random(2);
    for (let i = 0; i < 200; i++) {
      const ref = { jobId: randomText(next, 1 + Math.floor(next() * 127)), attempt: 1 + Math.floor(next() * 1e6) };
      const limit = 1024 + Math.floor(next() * 4096);
      const data = randomText(next, Math.floor(next() * 5000));
      const pieces = splitLogData(ref, "stderr", data, limit);
      assert.equal(pieces.join(""), data);
      for (const piece of pieces) {
        const frame = encode({ type: "log", ...ref, seq: Number.MAX_SAFE_INTEGER, stream: "stderr", data: piece });
        assert.ok(Buffer.byteLength(frame) <= limit, `${Buffer.byteLength(frame)} > ${limit}`);
        assert.ok(piece.length > 0);
      }
    }
  });

  test("a chunk that fits is not split", () => {
    assert.deepEqual(splitLogData({ jobId: "j", attempt: 1 }, "stdout", "hello\n", 1024), ["hello\n"]);
  });

  test("a result frame fits the minimum limit, whatever its reason and job id", () => {
    const next = random(3);
    for (let i = 0; i < 100; i++) {
      const result: JobResult = {
        jobId: randomText(next, 128),
        attempt: 1,
        outcome: "failed",
        exitCode: 1,
        signal: null,
        reason: randomText(next, 4096),
        startedAt: new Date().toISOString(),
        finishedAt: new Date().toISOString(),
      };
      const frame = fitResultFrame(result, 1024);
      assert.ok(Buffer.byteLength(encode(frame)) <= 1024);
      assert.match(frame.result.reason ?? "", /… \[\d+ more chars\]$/);
      assert.deepEqual({ ...frame.result, reason: null }, { ...result, reason: null }, "only the reason changes");
    }
  });

  test("a reject frame fits the minimum limit and the protocol's 1024 characters, whatever its reason and job id", () => {
    const next = random(4);
    for (let i = 0; i < 100; i++) {
      // A job id holds no NUL (the control plane refuses one), anything else goes.
      const ref = { jobId: randomText(next, 128).replaceAll("\u0000", "\u0001").slice(0, 128), attempt: 2_147_483_647 };
      // A low-disk refusal names the work dir, which may be any path.
      const reason = `low disk: 3 MiB free for /${randomText(next, 4000)}, below --min-free-disk-mb 1024`;
      const frame = fitRejectFrame(ref, reason, 1024);
      const text = encode(frame);
      assert.ok(Buffer.byteLength(text) <= 1024);
      assert.ok(frame.reason.length <= 1024);
      assert.match(frame.reason, /^low disk: 3 MiB free for \/.*… \[\d+ more chars\]$/s);
      const decoded = decodeRunnerMessage(text);
      assert.ok(decoded.ok, `the control plane takes it: ${JSON.stringify(decoded)}`);
    }
    assert.deepEqual(fitRejectFrame({ jobId: "j", attempt: 1 }, "paused", 1024), {
      type: "reject",
      jobId: "j",
      attempt: 1,
      reason: "paused",
    });
  });

  test("a result's reason over the protocol's 4096 characters is cut with a marker; a shorter one is kept", () => {
    const result: JobResult = {
      jobId: "j",
      attempt: 1,
      outcome: "failed",
      exitCode: null,
      signal: null,
      reason: `cannot start: ENOENT: ${"x".repeat(65_536)}`,
      startedAt: null,
      finishedAt: new Date().toISOString(),
    };
    const bounded = withBoundedFields(result);
    assert.ok(jobResultSchema.safeParse(bounded).success);
    assert.match(bounded.reason ?? "", /^cannot start: ENOENT: x+… \[\d+ more chars\]$/);
    const short = { ...result, reason: "x".repeat(4096) };
    assert.equal(withBoundedFields(short), short);
  });

  test(
    "a result's signal is a name of 1-32 characters: a longer one is cut to 32, an empty one is none",
    { timeout: 5000 },
    () => {
      const result: JobResult = {
        jobId: "j",
        attempt: 1,
        outcome: "failed",
        exitCode: null,
        signal: "SIGKILL",
        reason: "killed by SIGKILL",
        startedAt: null,
        finishedAt: new Date().toISOString(),
      };
      assert.equal(withBoundedFields(result), result);
      const long = withBoundedFields({ ...result, signal: "S".repeat(33) });
      assert.equal(long.signal, "S".repeat(32));
      assert.ok(jobResultSchema.safeParse(long).success);
      assert.equal(withBoundedFields({ ...result, signal: "" }).signal, null);
      assert.ok(!jobResultSchema.safeParse({ ...result, signal: "S".repeat(33) }).success, "the schema refuses 33");
      assert.ok(!jobResultSchema.safeParse({ ...result, signal: "" }).success, "the schema refuses an empty name");
    },
  );
});
