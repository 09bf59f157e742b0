// The identity body every runner API request opens with: the same wire fields, in the same
// order, as the bodies each call site used to build by hand.
import { test } from "node:test";
import assert from "node:assert/strict";
import { identityBody } from "../../src/api-client/identity.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { unregisterRequestSchema, verifyRequestSchema } from "../../src/protocol/http.js";

const host = { hostname: "mac-mini-07", platform: "darwin", arch: "arm64", fingerprint: "a".repeat(64) };
const runnerId = "rnr_" + "A".repeat(24);

test(
  "a verify or repair body is the versions, the runner id and the host facts, in that order",
  { timeout: 1000 },
  () => {
    const body = identityBody({ runnerId, host });
    assert.equal(
      JSON.stringify(body),
      JSON.stringify({ protocolVersion: PROTOCOL_VERSION, agentVersion: AGENT_VERSION, runnerId, host }),
    );
    assert.deepEqual(verifyRequestSchema.parse(body), body);
  },
);

test("an unregister body is the versions and the runner id, with no host", { timeout: 1000 }, () => {
  const body = identityBody({ runnerId });
  assert.deepEqual(body, { protocolVersion: PROTOCOL_VERSION, agentVersion: AGENT_VERSION, runnerId });
  assert.deepEqual(unregisterRequestSchema.parse(body), body);
});

test(
  "a register body carries the versions first, then the name, labels, host and replace as given",
  { timeout: 1000 },
  () => {
    const body = identityBody({ name: "mac-mini-07", labels: ["macos"], host, replace: true });
    assert.deepEqual(Object.keys(body), ["protocolVersion", "agentVersion", "name", "labels", "host", "replace"]);
  },
);
