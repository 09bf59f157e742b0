// Gathers the facts the repair planner needs: the state dir, its files and their modes, the
// lock, the credential, and the control plane's view of this runner. Reads only.
import { RunnerError } from "../errors.js";
import { openStore } from "../credentials/select.js";
import type { CredentialRead } from "../credentials/store.js";
import { verify } from "../api-client/runner-api.js";
import { identityBody } from "../api-client/identity.js";
import type { HostFacts } from "../protocol/http.js";
import type { StateFiles } from "../config/paths.js";
import path from "node:path";
import { promises as fs } from "node:fs";
import { entryAt, isRecordName, modeOf } from "../state/files.js";
import { inspectLock } from "../state/lock.js";
import { readRegistration } from "../state/registration.js";
import type { ForeignEntry, Observations } from "./plan.js";
import type { ProxyConfig } from "../net/proxy.js";

export interface ObserveContext {
  files: StateFiles;
  host: HostFacts;
  requestTimeoutMs: number;
  proxy: ProxyConfig;
}

export async function observe(ctx: ObserveContext): Promise<Observations> {
  const seen = await observeStateDirOnly(ctx);
  if (seen.stateDirMode === null) return seen;
  const { files } = ctx;
  seen.foreign = await findForeignEntries(files);
  const foreign = new Set(seen.foreign.map((f) => f.path));
  seen.outboxMode = foreign.has(files.outbox) ? null : await modeFor(files.outbox);
  seen.fileModes = [];
  for (const file of [files.registration, files.credentialFile]) {
    if (!foreign.has(file)) seen.fileModes.push({ path: file, mode: await modeFor(file) });
  }
  seen.lock = await inspectLock(files.lock);
  if (seen.lock.kind === "held" && seen.lock.owner.pid === process.pid) seen.lock = { kind: "free" };
  seen.registration = await readRegistration(files.registration);

  if (seen.registration.kind === "missing") {
    seen.recoverable = await findRecoverable(files);
    return seen;
  }
  if (seen.registration.kind !== "ok") return seen;

  const registration = seen.registration.value;
  seen.credential = await openStore(registration.credentialStore, files).read();
  const credential = seen.credential;
  if (credential.kind !== "ok" || credential.value.runnerId !== registration.runnerId) return seen;

  try {
    await verify(
      { url: registration.url, timeoutMs: ctx.requestTimeoutMs, proxy: ctx.proxy },
      credential.value.credential,
      identityBody({ runnerId: registration.runnerId, host: ctx.host }),
    );
    seen.controlPlane = { kind: "ok" };
  } catch (error) {
    // A bad proxy URL is the operator's input, not the control plane's answer: exit 2, not a finding.
    if (!(error instanceof RunnerError) || error.code === "config_invalid") throw error;
    seen.controlPlane = { kind: "error", code: error.code, message: error.message };
  }
  return seen;
}

/** Only whether the state dir exists; the rest of the observations are left empty. */
export async function observeStateDirOnly(ctx: ObserveContext): Promise<Observations> {
  return {
    stateDir: ctx.files.stateDir,
    stateDirMode: await modeFor(ctx.files.stateDir),
    outboxMode: null,
    registration: { kind: "missing" },
    fileModes: [],
    foreign: [],
    lock: { kind: "free" },
    credential: null,
    recoverable: null,
    controlPlane: null,
  };
}

/** Without a registration file: is there a credential for this state dir in either store? */
async function findRecoverable(files: StateFiles): Promise<Observations["recoverable"]> {
  for (const kind of ["keychain", "file"] as const) {
    const read: CredentialRead = await openStore(kind, files).read();
    if (read.kind === "ok") return { store: kind, value: read.value };
  }
  return null;
}

/**
 * Every place in the state dir where a file or dir of the runner's belongs but something else
 * stands: a link (followed by nothing), a dir where a file belongs, a fifo, a socket... The
 * records inside outbox/ and running/ are checked too (when those are real dirs).
 */
async function findForeignEntries(files: StateFiles): Promise<ForeignEntry[]> {
  const expected: { path: string; expected: "file" | "directory" }[] = [
    ...[files.registration, files.credentialFile, files.lock, files.devices, files.blocked].map((p) => ({
      path: p,
      expected: "file" as const,
    })),
    ...[files.outbox, files.running].map((p) => ({ path: p, expected: "directory" as const })),
  ];
  const found: ForeignEntry[] = [];
  /** Whether the expected kind of entry (or nothing) is at `p`; records it as foreign otherwise. */
  const fits = async (p: string, want: "file" | "directory"): Promise<boolean> => {
    const entry = await entryAt(p);
    if (entry === null || entry.type === want) return entry !== null;
    found.push({
      path: p,
      name: path.relative(files.stateDir, p),
      found: entry.type,
      expected: want,
      target: entry.target,
    });
    return false;
  };
  for (const want of expected) {
    if (!(await fits(want.path, want.expected)) || want.expected !== "directory") continue;
    for (const name of (await fs.readdir(want.path)).filter(isRecordName).sort())
      await fits(path.join(want.path, name), "file");
  }
  return found;
}

/** File modes mean nothing on Windows (ACLs do): report the wanted mode there. */
async function modeFor(path: string): Promise<number | null> {
  const mode = await modeOf(path);
  if (mode === null || process.platform !== "win32") return mode;
  return 0o600;
}
