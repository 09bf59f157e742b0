// Gathers the facts the repair planner needs: the state dir, its files and their modes, the
// lock, the credential, and the control plane's view of this runner. Reads only.
import { RunnerError } from "../errors.js";
import { openStore } from "../credentials/select.js";
import type { CredentialRead } from "../credentials/store.js";
import { verify } from "../api-client/runner-api.js";
import { identityBody } from "../api-client/identity.js";
import type { HostFacts } from "../protocol/http.js";
import type { StateFiles } from "../config/paths.js";
import os from "node:os";
import path from "node:path";
import { promises as fs } from "node:fs";
import { entryAt, isRecordName, modeOf, probeWritable } from "../state/files.js";
import { inspectLock } from "../state/lock.js";
import { readRegistration } from "../state/registration.js";
import { accountName, type Account } from "../state/owner.js";
import {
  ownershipBlocks,
  type ForeignEntry,
  type Observations,
  type OwnedEntry,
  type OwnershipSeen,
  type UnwritableDir,
} from "./plan.js";
import type { ProxyConfig } from "../net/proxy.js";

export interface ObserveContext {
  files: StateFiles;
  host: HostFacts;
  requestTimeoutMs: number;
  proxy: ProxyConfig;
  insecurePlaintext: boolean;
  /** The jobs' work dir (--work-dir), whose owner is judged with the state dir's. */
  workDir?: string;
  /** Who must own the state dir (`repair --owner`, `service install --run-as`); default: see expectedOwner. */
  owner?: Account;
}

export async function observe(ctx: ObserveContext): Promise<Observations> {
  const seen = await observeStateDirOnly(ctx);
  if (seen.stateDirMode === null) return seen;
  // A user who does not own the state dir cannot look inside it.
  if (seen.ownership !== null && ownershipBlocks(seen.ownership)) return seen;
  const { files } = ctx;
  seen.foreign = await findForeignEntries(files);
  seen.ownership = await observeOwnership(ctx, true);
  if (seen.ownership !== null && ownershipBlocks(seen.ownership)) return seen;
  const foreign = new Set(seen.foreign.map((f) => f.path));
  seen.unwritable = await findUnwritableDirs(ctx, foreign);
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
      {
        url: registration.url,
        timeoutMs: ctx.requestTimeoutMs,
        proxy: ctx.proxy,
        insecurePlaintext: ctx.insecurePlaintext,
      },
      credential.value.credential,
      identityBody({ runnerId: registration.runnerId, host: ctx.host }),
    );
    seen.controlPlane = { kind: "ok" };
  } catch (error) {
    // A bad proxy URL, or plain http:// to another host without the opt-in, is the operator's
    // input, not the control plane's answer: exit 2, not a finding.
    if (!(error instanceof RunnerError) || error.code === "config_invalid" || error.code === "usage") throw error;
    seen.controlPlane = { kind: "error", code: error.code, message: error.message };
  }
  return seen;
}

/** Only whether the state dir exists, and who owns it; the rest of the observations are left empty. */
export async function observeStateDirOnly(ctx: ObserveContext): Promise<Observations> {
  const stateDirMode = await modeFor(ctx.files.stateDir);
  return {
    stateDir: ctx.files.stateDir,
    stateDirMode,
    ownership: stateDirMode === null ? null : await observeOwnership(ctx, false),
    outboxMode: null,
    registration: { kind: "missing" },
    fileModes: [],
    foreign: [],
    unwritable: [],
    lock: { kind: "free" },
    credential: null,
    recoverable: null,
    controlPlane: null,
  };
}

/**
 * The owners of the state dir and (`inside`) of everything the runner keeps in it: its top
 * level, outbox/ and running/, and the work dir with its top-level entries (job dirs, given
 * away with their contents). Links are left to the foreign-entry check. Names are looked up
 * only for owners other than the user running this (none, normally). Null on Windows.
 */
export async function observeOwnership(ctx: ObserveContext, inside: boolean): Promise<OwnershipSeen | null> {
  const uid = process.getuid?.();
  if (uid === undefined) return null;
  const { files } = ctx;
  const found: Omit<OwnedEntry, "owner">[] = [
    { path: files.stateDir, name: files.stateDir, uid: (await fs.stat(files.stateDir)).uid, tree: false },
  ];
  const add = async (dir: string, tree: boolean) => {
    let names: string[];
    try {
      names = (await fs.readdir(dir)).sort();
    } catch (error) {
      if (["ENOENT", "ENOTDIR"].includes((error as NodeJS.ErrnoException).code ?? "")) return;
      throw error;
    }
    for (const name of names) {
      const p = path.join(dir, name);
      const entry = await fs.lstat(p).catch(() => null);
      if (entry === null || entry.isSymbolicLink()) continue;
      found.push({ path: p, name: nameIn(files.stateDir, p), uid: entry.uid, tree });
    }
  };
  const workDir = ctx.workDir ?? files.work;
  if (inside) {
    await add(files.stateDir, false);
    for (const dir of [files.outbox, files.running])
      if ((await entryAt(dir))?.type === "directory") await add(dir, false);
    if (!found.some((entry) => entry.path === workDir)) {
      const work = await fs.lstat(workDir).catch(() => null);
      if (work?.isDirectory())
        found.push({ path: workDir, name: nameIn(files.stateDir, workDir), uid: work.uid, tree: false });
    }
    if ((await entryAt(workDir))?.type === "directory") await add(workDir, true);
  }
  const runningAs = { uid, name: os.userInfo().username };
  const names = new Map<number, string>([[uid, runningAs.name]]);
  if (ctx.owner) names.set(ctx.owner.uid, ctx.owner.name);
  for (const entry of found) if (!names.has(entry.uid)) names.set(entry.uid, await accountName(entry.uid));
  return {
    runningAs,
    wanted: ctx.owner ? { uid: ctx.owner.uid, name: ctx.owner.name } : null,
    entries: found.map((entry) => ({ ...entry, owner: names.get(entry.uid)! })),
  };
}

/**
 * The dirs the runner creates files in that it cannot: the state dir (its lock), outbox/ and
 * running/ (results, the job journal), and the work dir (jobs' dirs), or the nearest dir above
 * a work dir that does not exist yet (where `start` would create it). Found by trying (see
 * probeWritable). A state dir that cannot be written is one finding: the dirs inside it (a
 * read-only mount, mostly) are not probed then.
 */
async function findUnwritableDirs(ctx: ObserveContext, foreign: Set<string>): Promise<UnwritableDir[]> {
  const { files } = ctx;
  const found: UnwritableDir[] = [];
  const probed = new Set<string>();
  const probe = async (dir: string, role: UnwritableDir["role"], at: string) => {
    if (probed.has(at)) return;
    probed.add(at);
    const cause = await probeWritable(at);
    if (cause !== null) found.push({ path: dir, role, probed: at, cause });
  };
  await probe(files.stateDir, "state dir", files.stateDir);
  const stateDirWritable = found.length === 0;
  if (stateDirWritable)
    for (const [dir, role] of [
      [files.outbox, "outbox dir"],
      [files.running, "journal dir"],
    ] as const)
      if (!foreign.has(dir) && (await entryAt(dir))?.type === "directory") await probe(dir, role, dir);
  const workDir = path.resolve(ctx.workDir ?? files.work);
  const inStateDir = !path.relative(files.stateDir, workDir).startsWith("..");
  if (stateDirWritable || !inStateDir) await probe(workDir, "work dir", await nearestExisting(workDir));
  return found;
}

/** `p` itself when something is there (a file too: creating in it then fails, ENOTDIR), else the nearest dir above it that is. */
async function nearestExisting(p: string): Promise<string> {
  for (let at = p; ; at = path.dirname(at)) {
    if ((await entryAt(at).catch(() => null)) !== null || path.dirname(at) === at) return at;
  }
}

/** A path inside the state dir by its name there; anything else by its full path. */
function nameIn(stateDir: string, p: string): string {
  const inside = path.relative(stateDir, p);
  return inside === "" || inside.startsWith("..") || path.isAbsolute(inside) ? p : inside;
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
