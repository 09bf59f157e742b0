// Carries out one automatic fix. Each returns a sentence saying what it did; a failure throws
// and the caller reports it as the fix's outcome.
import { promises as fs } from "node:fs";
import { RunnerError } from "../errors.js";
import { repair, verify, type ApiOptions } from "../api-client/runner-api.js";
import type { StateFiles } from "../config/paths.js";
import { openStore } from "../credentials/select.js";
import type { StoredCredential } from "../credentials/store.js";
import type { HostFacts } from "../protocol/http.js";
import { identityBody } from "../api-client/identity.js";
import { DIR_MODE, chmodNoFollow, ensureDir, entryAt, moveAside } from "../state/files.js";
import { inspectLock } from "../state/lock.js";
import {
  readRegistration,
  writeRegistration,
  type CredentialStoreKind,
  type Registration,
} from "../state/registration.js";
import { chownNoFollow, lookupAccount } from "../state/owner.js";
import { enroll, registrationFrom } from "./enroll.js";
import type { Action } from "./plan.js";
import type { ProxyConfig } from "../net/proxy.js";

export interface ApplyContext {
  files: StateFiles;
  host: HostFacts;
  requestTimeoutMs: number;
  proxy: ProxyConfig;
  insecurePlaintext: boolean;
  registrationToken: string | undefined;
  now: () => Date;
}

export async function applyFix(action: Action, ctx: ApplyContext): Promise<string> {
  const { files } = ctx;
  switch (action.kind) {
    case "create_state_dir":
      await makePrivateDir(files.stateDir, true);
      await makePrivateDir(files.outbox);
      return `created ${files.stateDir} and its outbox (0700)`;
    case "create_outbox":
      await makePrivateDir(files.outbox);
      return `created ${files.outbox} (0700)`;
    case "tighten_mode":
      // The state dir itself may be a link (documented); nothing inside it is followed.
      if (action.path === files.stateDir) await fs.chmod(action.path, action.mode);
      else await chmodNoFollow(action.path, action.mode, action.type);
      return `set ${action.path} to 0${action.mode.toString(8)}`;
    case "set_aside_entry": {
      const entry = await entryAt(action.path);
      if (entry === null || entry.type === action.expected) return `${action.path} is no longer foreign; left alone`;
      const kept = await moveAside(action.path, ctx.now());
      return `moved the ${entry.type} to ${kept} (not followed)`;
    }
    case "set_aside_registration": {
      const kept = await moveAside(files.registration, ctx.now());
      return `moved the bad file to ${kept}`;
    }
    case "rebuild_registration":
      return rebuildRegistration(action.from, ctx);
    case "remove_stale_lock": {
      const state = await inspectLock(files.lock);
      if (state.kind !== "stale") return "the lock is no longer stale; left alone";
      await fs.rm(files.lock, { force: true });
      return `removed the stale lock (${state.reason})`;
    }
    case "set_owner": {
      const account = await lookupAccount(action.owner);
      // The state dir itself may be a link (documented): its target is what the runner uses.
      if (action.path === files.stateDir) await fs.chown(action.path, account.uid, account.gid);
      else await chownNoFollow(action.path, account, action.tree);
      return `gave ${action.path}${action.tree ? " and what is in it" : ""} to ${account.name}`;
    }
    case "reregister":
      return reregister(ctx);
    case "rebind_host":
      return rebindHost(ctx);
  }
}

async function makePrivateDir(dir: string, followLink = false): Promise<void> {
  await ensureDir(dir, { followLink });
  // mkdir's mode is filtered by the umask
  if (followLink) await fs.chmod(dir, DIR_MODE);
  else await chmodNoFollow(dir, DIR_MODE, "directory");
}

async function rebuildRegistration(from: CredentialStoreKind, ctx: ApplyContext): Promise<string> {
  const read = await openStore(from, ctx.files).read();
  if (read.kind !== "ok")
    throw new RunnerError("credential_missing", `the ${from} store no longer holds the credential`);
  const stored = read.value;
  const registration = await describeFromControlPlane(stored, from, ctx);
  await writeRegistration(ctx.files.registration, registration);
  return `rebuilt registration.json for runner ${registration.runnerId} (${registration.name}) from the ${from} store`;
}

/** Asks the control plane who this credential belongs to; re-binds the host when it moved. */
async function describeFromControlPlane(
  stored: StoredCredential,
  store: CredentialStoreKind,
  ctx: ApplyContext,
): Promise<Registration> {
  const api = apiOf(stored.url, ctx);
  const body = identityBody({ runnerId: stored.runnerId, host: ctx.host });
  try {
    const { runner } = await verify(api, stored.credential, body);
    return registrationFrom(runner, stored.url, store);
  } catch (error) {
    if (!(error instanceof RunnerError) || error.code !== "host_fingerprint_mismatch") throw error;
    const { runner } = await repair(api, stored.credential, body);
    return registrationFrom(runner, stored.url, store);
  }
}

async function currentRegistration(ctx: ApplyContext): Promise<Registration> {
  const read = await readRegistration(ctx.files.registration);
  if (read.kind !== "ok") throw new RunnerError("not_registered", "registration.json is missing or unusable");
  return read.value;
}

async function reregister(ctx: ApplyContext): Promise<string> {
  if (!ctx.registrationToken) throw new RunnerError("needs_operator", "re-registering needs a registration token");
  const old = await currentRegistration(ctx);
  const fresh = await enroll({
    url: old.url,
    registrationToken: ctx.registrationToken,
    name: old.name,
    labels: old.labels,
    replace: true,
    store: openStore(old.credentialStore, ctx.files),
    files: ctx.files,
    host: ctx.host,
    timeoutMs: ctx.requestTimeoutMs,
    proxy: ctx.proxy,
    insecurePlaintext: ctx.insecurePlaintext,
    now: ctx.now(),
  });
  return `registered again as ${fresh.runnerId} (was ${old.runnerId}), name ${fresh.name}, credential in the ${fresh.credentialStore} store`;
}

async function rebindHost(ctx: ApplyContext): Promise<string> {
  const old = await currentRegistration(ctx);
  const read = await openStore(old.credentialStore, ctx.files).read();
  if (read.kind !== "ok") throw new RunnerError("credential_missing", "the credential is no longer in its store");
  const { runner, previousFingerprint } = await repair(
    apiOf(old.url, ctx),
    read.value.credential,
    identityBody({ runnerId: old.runnerId, host: ctx.host }),
  );
  await writeRegistration(ctx.files.registration, {
    ...registrationFrom(runner, old.url, old.credentialStore),
    registeredAt: old.registeredAt,
  });
  return `the control plane re-bound runner ${runner.runnerId} from host ${previousFingerprint.slice(0, 12)}… to ${ctx.host.fingerprint.slice(0, 12)}…`;
}

/** How to reach the control plane at `url` with this context's timeout, proxy and transport rule. */
function apiOf(url: string, ctx: ApplyContext): ApiOptions {
  return { url, timeoutMs: ctx.requestTimeoutMs, proxy: ctx.proxy, insecurePlaintext: ctx.insecurePlaintext };
}
