// The repair planner: a pure function from what was observed to the list of findings, each
// with the fix that applies. `runner verify` prints the findings, `runner repair` and
// `runner start` apply the automatic fixes and re-observe until nothing more can be done.
import { stateFiles, type StateFiles } from "../config/paths.js";
import type { ErrorCode } from "../errors.js";
import type { EntryType, JsonRead } from "../state/files.js";
import type { LockState } from "../state/lock.js";
import type { Registration } from "../state/registration.js";
import type { CredentialRead, StoredCredential } from "../credentials/store.js";
import { DIR_MODE, SECRET_FILE_MODE } from "../state/files.js";

/** Something other than the runner's own file or dir where one belongs in the state dir. */
export interface ForeignEntry {
  path: string;
  /** The path inside the state dir, for messages. */
  name: string;
  found: EntryType;
  expected: "file" | "directory";
  /** Where a link points (never followed). */
  target: string | null;
}

/** A dir the runner must create files in and cannot, as found by trying. */
export interface UnwritableDir {
  /** The state dir, its outbox/ or running/, or the work dir. */
  path: string;
  role: "state dir" | "outbox dir" | "journal dir" | "work dir";
  /** Where creating a file failed: `path`, or the nearest dir above a work dir that does not exist yet. */
  probed: string;
  /** The errno code and its cause in words, e.g. `EROFS (the file system is read-only)`. */
  cause: string;
}

/** Everything the planner needs to know, gathered by `observe`. */
export interface Observations {
  stateDir: string;
  stateDirMode: number | null;
  outboxMode: number | null;
  registration: JsonRead<Registration>;
  /** Modes of files that hold secrets or identity; null when absent. */
  fileModes: { path: string; mode: number | null }[];
  /** Links and foreign file types where state files belong; nothing else is judged on those paths. */
  foreign: ForeignEntry[];
  /** The dirs the runner must write in and cannot (a read-only mount, no write permission...). */
  unwritable: UnwritableDir[];
  lock: LockState;
  /** The credential from the store the registration names; null without a valid registration. */
  credential: CredentialRead | null;
  /** Without a valid registration: a credential found in a store that can rebuild it. */
  recoverable: { store: "keychain" | "file"; value: StoredCredential } | null;
  /** The control plane's answer to verify; null when it could not be asked. */
  controlPlane: { kind: "ok" } | { kind: "error"; code: ErrorCode; message: string } | null;
  /** Who owns the state dir and what is in it; null where owners mean nothing (Windows). */
  ownership: OwnershipSeen | null;
}

/** A file or dir of the runner's, with its owner. */
export interface OwnedEntry {
  path: string;
  /** The path inside the state dir (or the work dir's own path), for messages. */
  name: string;
  uid: number;
  /** The owner's user name (the uid when the user database has none). */
  owner: string;
  /** A directory whose contents go with it when it is given to another user (a job's leftover work dir). */
  tree: boolean;
}

export interface OwnershipSeen {
  /** The user running this command. */
  runningAs: { uid: number; name: string };
  /** The owner asked for (`repair --owner`, `service install --run-as`); null: the default rule. */
  wanted: { uid: number; name: string } | null;
  /** The state dir first, then what is in it (top level, outbox/ and running/), and the work dir's top level. */
  entries: OwnedEntry[];
}

export interface PlanContext {
  /** A registration token was given (to `repair --token...`), so re-registering is possible. */
  haveRegistrationToken: boolean;
}

export type Action =
  | { kind: "create_state_dir" }
  | { kind: "tighten_mode"; path: string; mode: number; type: "file" | "directory" }
  | { kind: "set_aside_entry"; path: string; expected: "file" | "directory" }
  | { kind: "create_outbox" }
  | { kind: "set_aside_registration" }
  | { kind: "rebuild_registration"; from: "keychain" | "file" }
  | { kind: "remove_stale_lock" }
  | { kind: "reregister" }
  | { kind: "rebind_host" }
  /** `owner` is a user name (or a uid without one); `tree`: the dir's contents too, never through a link. */
  | { kind: "set_owner"; path: string; owner: string; tree: boolean };

export type Fix =
  | { kind: "auto"; action: Action; description: string }
  /** Only a person can fix it; `command` is the exact command to run, when there is one. */
  | { kind: "operator"; description: string; command?: string }
  /** Nothing to do but try again later (the control plane is down, say). */
  | { kind: "retry"; description: string };

export type FindingCode =
  | "state_dir_missing"
  | "state_dir_permissions"
  | "foreign_file_type"
  | "outbox_missing"
  | "outbox_permissions"
  | "file_permissions"
  | "state_dir_owner"
  | "file_owner"
  | "state_dir_unwritable"
  | "work_dir_unwritable"
  | "registration_invalid"
  | "not_registered"
  | "stale_lock"
  | "credential_missing"
  | "credential_invalid"
  | "credential_store_unavailable"
  | "credential_revoked"
  | "runner_deleted"
  | "host_changed"
  | "control_plane_unavailable"
  | "upgrade_required"
  | "control_plane_rejected";

export interface Finding {
  code: FindingCode;
  problem: string;
  fix: Fix;
}

const REPAIR_WITH_TOKEN = "runner repair --token-file <file with a new registration token>";

export function planRepairs(seen: Observations, context: PlanContext): Finding[] {
  if (seen.stateDirMode === null) {
    return [
      {
        code: "state_dir_missing",
        problem: `the state dir ${seen.stateDir} does not exist`,
        fix: {
          kind: "auto",
          action: { kind: "create_state_dir" },
          description: `create ${seen.stateDir} with mode 0700`,
        },
      },
    ];
  }
  // Until the registration and the credential are the runner's own files, nothing read through
  // them can be trusted: judge the identity once they have been moved aside (the next round).
  const owners = seen.ownership === null ? [] : planOwnership(seen.ownership);
  // Files a user cannot read were not looked into: only root (or a chown) can go on from here.
  if (seen.ownership !== null && ownershipBlocks(seen.ownership)) return [...seen.foreign.map(planForeign), ...owners];
  const files = stateFiles(seen.stateDir);
  const foreign = new Set(seen.foreign.map((f) => f.path));
  const identityTrusted = !foreign.has(files.registration) && !foreign.has(files.credentialFile);
  return [...planLocal(seen, files, foreign), ...owners, ...(identityTrusted ? planIdentity(seen, context) : [])];
}

/**
 * Who must own the state dir and everything in it: the owner asked for; else, for root (who
 * can read anything, and installs machine-wide services), the state dir's owner; else the user
 * running this, who must be able to write the runner's files.
 */
export function expectedOwner(seen: OwnershipSeen): { uid: number; name: string; why: string } {
  if (seen.wanted) return { ...seen.wanted, why: "the owner asked for" };
  const dir = seen.entries[0];
  if (seen.runningAs.uid === 0 && dir) return { uid: dir.uid, name: dir.owner, why: "the state dir's owner" };
  return { ...seen.runningAs, why: "who runs this" };
}

/** Entries owned by someone other than the expected owner, and only root may give them away. */
export function ownershipBlocks(seen: OwnershipSeen): boolean {
  const expected = expectedOwner(seen);
  return seen.runningAs.uid !== 0 && seen.entries.some((entry) => entry.uid !== expected.uid);
}

export function planOwnership(seen: OwnershipSeen): Finding[] {
  const expected = expectedOwner(seen);
  const asRoot = seen.runningAs.uid === 0;
  const stateDir = seen.entries[0]?.path;
  return seen.entries
    .filter((entry) => entry.uid !== expected.uid)
    .map((entry) => {
      const isStateDir = entry.path === stateDir;
      const problem = isStateDir
        ? `the state dir ${entry.path} belongs to ${entry.owner}, not ${expected.name} (${expected.why}): the runner cannot write its own files there`
        : `${entry.name} belongs to ${entry.owner}, not ${expected.name} (${expected.why}): a runner running as ${expected.name} cannot ${entry.tree ? "remove" : "read or replace"} it`;
      const fix: Fix = asRoot
        ? {
            kind: "auto",
            action: { kind: "set_owner", path: entry.path, owner: expected.name, tree: entry.tree },
            description: `give it to ${expected.name}${entry.tree ? " (with what is in it)" : ""}, never through a link`,
          }
        : {
            kind: "operator",
            description: `only root can give it to ${expected.name}`,
            command: `sudo runner repair --state-dir ${stateDir ?? entry.path} --owner ${expected.name}`,
          };
      return { code: isStateDir ? "state_dir_owner" : "file_owner", problem, fix } satisfies Finding;
    });
}

/**
 * A dir the runner cannot write in: no repair can make a file system writable or decide who
 * may write there, so a person must (and `start` would fail on the lock, a result or a job).
 */
function planUnwritable(dir: UnwritableDir): Finding {
  const work = dir.role === "work dir";
  const problem =
    dir.probed === dir.path
      ? `the ${dir.role} ${dir.path} cannot be written: ${dir.cause}`
      : `the ${dir.role} ${dir.path} does not exist and cannot be created in ${dir.probed}: ${dir.cause}`;
  return {
    code: work ? "work_dir_unwritable" : "state_dir_unwritable",
    problem: `${problem}; the runner keeps ${work ? "its jobs' directories" : "its lock, results and job journal"} there`,
    fix: {
      kind: "operator",
      description: `make it writable for the user the runner runs as (remount the file system read-write, or fix its owner or mode; \`runner repair\` changes neither), or give the runner another ${work ? "--work-dir" : "--state-dir"}`,
    },
  };
}

function planForeign(entry: ForeignEntry): Finding {
  const what =
    entry.found === "symlink"
      ? `a symbolic link${entry.target === null ? "" : ` to ${entry.target}`}`
      : `a ${entry.found}`;
  return {
    code: "foreign_file_type",
    problem: `${entry.name} is ${what} where a ${entry.expected === "file" ? "regular file" : "directory"} belongs; nothing in the state dir is followed through a link`,
    fix: {
      kind: "auto",
      action: { kind: "set_aside_entry", path: entry.path, expected: entry.expected },
      description: `move it aside unfollowed (kept as ${entry.name}.corrupt-<time>, never deleted), then repair as usual`,
    },
  };
}

/** `foreign` holds the paths of the foreign entries. */
function planLocal(seen: Observations, files: StateFiles, foreign: Set<string>): Finding[] {
  const findings: Finding[] = [...seen.unwritable.map(planUnwritable), ...seen.foreign.map(planForeign)];
  if (looser(seen.stateDirMode, DIR_MODE)) {
    findings.push({
      code: "state_dir_permissions",
      problem: `the state dir ${seen.stateDir} has mode ${octal(seen.stateDirMode)}; others can read it`,
      fix: {
        kind: "auto",
        action: { kind: "tighten_mode", path: seen.stateDir, mode: DIR_MODE, type: "directory" },
        description: "set its mode to 0700",
      },
    });
  }
  // A foreign outbox is moved aside first; the next round finds it missing and creates it.
  if (seen.outboxMode === null && !foreign.has(files.outbox)) {
    findings.push({
      code: "outbox_missing",
      problem: "the durable outbox dir is missing",
      fix: { kind: "auto", action: { kind: "create_outbox" }, description: "create it with mode 0700" },
    });
  } else if (looser(seen.outboxMode, DIR_MODE)) {
    findings.push({
      code: "outbox_permissions",
      problem: `the outbox dir has mode ${octal(seen.outboxMode)}`,
      fix: {
        kind: "auto",
        action: { kind: "tighten_mode", path: files.outbox, mode: DIR_MODE, type: "directory" },
        description: "set its mode to 0700",
      },
    });
  }
  for (const file of seen.fileModes) {
    if (looser(file.mode, SECRET_FILE_MODE)) {
      findings.push({
        code: "file_permissions",
        problem: `${file.path} has mode ${octal(file.mode)}; only its owner should read it`,
        fix: {
          kind: "auto",
          action: { kind: "tighten_mode", path: file.path, mode: SECRET_FILE_MODE, type: "file" },
          description: "set its mode to 0600",
        },
      });
    }
  }
  if (seen.lock.kind === "stale" && !foreign.has(files.lock)) {
    findings.push({
      code: "stale_lock",
      problem: `a stale lock: ${seen.lock.reason}`,
      fix: {
        kind: "auto",
        action: { kind: "remove_stale_lock" },
        description: "remove it (the next start would take it over anyway)",
      },
    });
  }
  return findings;
}

function planIdentity(seen: Observations, context: PlanContext): Finding[] {
  const reg = seen.registration;
  if (reg.kind === "invalid") {
    return [
      {
        code: "registration_invalid",
        problem: `registration.json is unusable: ${reg.reason}`,
        fix: {
          kind: "auto",
          action: { kind: "set_aside_registration" },
          description:
            "move it aside (kept as registration.json.corrupt-<time>) and rebuild it from the credential store",
        },
      },
    ];
  }
  if (reg.kind === "missing") {
    if (seen.recoverable) {
      return [
        {
          code: "not_registered",
          problem: `registration.json is missing, but the ${seen.recoverable.store} store still holds the credential of runner ${seen.recoverable.value.runnerId}`,
          fix: {
            kind: "auto",
            action: { kind: "rebuild_registration", from: seen.recoverable.store },
            description: "rebuild registration.json from the stored credential and the control plane's record",
          },
        },
      ];
    }
    return [
      {
        code: "not_registered",
        problem: "this runner is not registered",
        fix: {
          kind: "operator",
          description: "register it with a registration token from the control plane",
          command: "runner register --url <control plane URL> --token-file <file>",
        },
      },
    ];
  }
  const credential = seen.credential;
  const storeName = reg.value.credentialStore === "keychain" ? "keychain" : "credential file";
  if (credential && credential.kind !== "ok") {
    if (credential.kind === "unavailable") {
      return [
        {
          code: "credential_store_unavailable",
          problem: `the credential cannot be read: ${credential.reason}`,
          fix: {
            kind: "operator",
            description:
              "make the keychain usable (unlock it, or start the user session's keyring), then run again; re-registering would only hide the problem",
          },
        },
      ];
    }
    const code = credential.kind === "missing" ? "credential_missing" : "credential_invalid";
    const problem =
      credential.kind === "missing"
        ? `credential missing from ${storeName}`
        : `the credential in the ${storeName} is unusable: ${credential.reason}`;
    return [reregisterFinding(code, problem, context)];
  }
  if (credential?.kind === "ok" && credential.value.runnerId !== reg.value.runnerId) {
    return [
      reregisterFinding(
        "credential_invalid",
        `the ${storeName} holds the credential of another runner (${credential.value.runnerId})`,
        context,
      ),
    ];
  }
  return planControlPlane(seen, context);
}

function planControlPlane(seen: Observations, context: PlanContext): Finding[] {
  const answer = seen.controlPlane;
  if (answer === null || answer.kind === "ok") return [];
  switch (answer.code) {
    case "credential_revoked":
      return [
        reregisterFinding(
          "credential_revoked",
          `the control plane no longer accepts this runner's credential: ${answer.message}`,
          context,
        ),
      ];
    case "runner_deleted":
      return [
        reregisterFinding(
          "runner_deleted",
          `the control plane has no record of this runner any more: ${answer.message}`,
          context,
        ),
      ];
    case "host_fingerprint_mismatch":
      return [
        {
          code: "host_changed",
          problem: "the host fingerprint changed since registration (new machine id, or the state dir was moved)",
          fix: {
            kind: "auto",
            action: { kind: "rebind_host" },
            description: "ask the control plane to re-bind this runner to this host (its credential is still valid)",
          },
        },
      ];
    case "upgrade_required":
      return [
        {
          code: "upgrade_required",
          problem: answer.message,
          fix: { kind: "operator", description: "install a runner version the control plane accepts" },
        },
      ];
    case "control_plane_unavailable":
      return [
        {
          code: "control_plane_unavailable",
          problem: answer.message,
          fix: { kind: "retry", description: "nothing local is wrong; try again when the control plane is reachable" },
        },
      ];
    default:
      return [
        {
          code: "control_plane_rejected",
          problem: answer.message,
          fix: { kind: "operator", description: "check the control plane URL and version" },
        },
      ];
  }
}

function reregisterFinding(code: FindingCode, problem: string, context: PlanContext): Finding {
  if (context.haveRegistrationToken) {
    return {
      code,
      problem,
      fix: {
        kind: "auto",
        action: { kind: "reregister" },
        description: "register again with the given registration token, keeping name and labels",
      },
    };
  }
  return {
    code,
    problem,
    fix: {
      kind: "operator",
      description: "get a new registration token from the control plane and re-register",
      command: REPAIR_WITH_TOKEN,
    },
  };
}

function looser(mode: number | null, wanted: number): boolean {
  return mode !== null && (mode & ~wanted & 0o777) !== 0;
}

function octal(mode: number | null): string {
  return mode === null ? "none" : "0" + mode.toString(8).padStart(3, "0");
}
