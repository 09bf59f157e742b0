// Protocol versioning. The protocol version is a single integer: a control plane lists the
// versions it speaks, a runner sends the one it speaks, and 426 answers a mismatch. Within
// one version only compatible changes are made (new optional fields, new error codes, new
// message types that a peer may ignore); anything else is a new version.
import { createRequire } from "node:module";

export const PROTOCOL_VERSION = 1;

const require = createRequire(import.meta.url);
const pkg = require("../../../package.json") as { version: string };

/** This agent's version (package.json), sent with every registration and verification. */
export const AGENT_VERSION: string = pkg.version;

/** Compares dotted numeric versions ("1.2.10" > "1.2.9"); pre-release tags are ignored. */
export function compareVersions(a: string, b: string): number {
  const parse = (v: string) =>
    v
      .split("-")[0]!
      .split(".")
      .map((n) => Number.parseInt(n, 10) || 0);
  const pa = parse(a);
  const pb = parse(b);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return Math.sign(d);
  }
  return 0;
}
