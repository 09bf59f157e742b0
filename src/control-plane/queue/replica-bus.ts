// How one control-plane process tells the others on the same database what only the holder
// of a runner's socket can act on: a job may be dispatchable now, a job must be cancelled, a
// runner opened a newer connection elsewhere, an admin paused, relabelled, revoked or deleted
// a runner. Every signal is a hint that makes a replica act at once; none carries state the
// database does not also hold, so a signal lost while a replica's listener reconnects is made
// up by one resync pass (dispatch, connection generations, requested cancels) afterwards.
//
// Two implementations: on SQLite there is one process, which acts on its own changes
// directly, so `publish` has no one to reach (`localBus`); on PostgreSQL every replica
// LISTENs on one channel and publishes with NOTIFY (store/postgres/notifications.ts).
import { z } from "zod";
import { jobRefSchema } from "../../protocol/channel.js";
import { labelsSchema, runnerIdSchema } from "../../protocol/http.js";

/** The PostgreSQL channel every replica LISTENs on. */
export const REPLICA_CHANNEL = "runner_control_plane";

/** What a replica may tell the others; declared once, checked on receipt (it crossed the database). */
export const replicaSignalSchema = z.discriminatedUnion("kind", [
  /** A job became claimable (submitted, released, re-queued): replicas with runners that have credits run a pass. */
  z.object({ kind: z.literal("dispatch") }),
  /** The holder of the runner's socket sends `cancel` for this attempt. */
  jobRefSchema.extend({ kind: z.literal("cancel"), runnerId: runnerIdSchema, reason: z.string().max(200) }),
  /** The runner opened a connection with this generation: a replica holding an older one closes it with 4000. */
  z.object({ kind: z.literal("connected"), runnerId: runnerIdSchema, generation: z.number().int().positive() }),
  /** An admin paused (reason) or resumed (null) the runner. */
  z.object({ kind: z.literal("paused"), runnerId: runnerIdSchema, reason: z.string().max(500).nullable() }),
  /** An admin replaced the runner's registered labels. */
  z.object({ kind: z.literal("labels"), runnerId: runnerIdSchema, labels: labelsSchema }),
  /** The runner may no longer connect: its holder closes the socket (4001/4002). */
  z.object({ kind: z.literal("ended"), runnerId: runnerIdSchema, why: z.enum(["revoked", "deleted", "replaced"]) }),
  /** A replica stored a new admin token hash: the others forget the one they keep (admin-token.ts). */
  z.object({ kind: z.literal("admin_token") }),
]);
export type ReplicaSignal = z.infer<typeof replicaSignalSchema>;

/** A signal as it travels: who sent it (a replica ignores its own). */
export const replicaEnvelopeSchema = z.object({ from: z.string().min(1).max(64), signal: replicaSignalSchema });

export interface ReplicaBusHandlers {
  /** A signal from another replica. */
  onSignal(signal: ReplicaSignal): void;
  /**
   * The listener (re)connected after signals may have been missed: make up for them from the
   * database. Not called for the first connection at start-up.
   */
  onResync(): void;
}

/**
 * A `dispatch` signal that a statement carries itself (the job's INSERT, on PostgreSQL, calls
 * `pg_notify(channel, payload)`): NOTIFY is delivered at commit, so no replica hears it before
 * the row is there, and it costs no round trip of its own.
 */
export interface DispatchNotice {
  channel: string;
  payload: string;
  /** The statement carrying it returned (committed or failed): the bus may send the next one. */
  done(): void;
}

export interface ReplicaBus {
  /** This process's id among the replicas (random per start). */
  readonly replicaId: string;
  /** Tells every other replica; this one acts on its own change itself. Never throws: a failure is logged. */
  publish(signal: ReplicaSignal): void;
  /**
   * A `dispatch` signal for the caller's statement to carry, or undefined when there is no one
   * to tell or one is on its way already: then the caller publishes `dispatch` after its commit
   * as usual (coalesced with the one on its way).
   */
  carryDispatch(): DispatchNotice | undefined;
  close(): Promise<void>;
}

/** One process (SQLite): there is no other replica to tell. */
export function localBus(replicaId: string): ReplicaBus {
  return { replicaId, publish: () => undefined, carryDispatch: () => undefined, close: () => Promise.resolve() };
}
