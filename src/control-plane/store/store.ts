// Persistence of the reference control plane: one SQLite file (or memory) through
// better-sqlite3. The schema evolves by numbered migrations kept in this file and tracked
// with `PRAGMA user_version`. Runners and tokens are handled here; the job queue's SQL lives
// in job-store.ts on the same connection (`store.jobs`), the devices' in device-store.ts
// (`store.devices`).
// Secrets never reach this layer in plain text: callers pass sha256 hashes.
import { createRequire } from "node:module";
import type Database from "better-sqlite3";
import { hostFactsSchema, labelsSchema, type HostFacts } from "../../protocol/http.js";
import { RunnerError } from "../../errors.js";
import { DeviceStore } from "./device-store.js";
import { JobStore } from "./job-store.js";

/**
 * Migration N (1-based) brings the schema from user_version N-1 to N. Append only: a
 * migration that has shipped is never edited. Times are integer milliseconds since the epoch.
 */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) STRICT;

  CREATE TABLE runners (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    labels          TEXT NOT NULL,   -- JSON array of strings
    host            TEXT NOT NULL,   -- JSON HostFacts, fingerprint included
    credential_hash TEXT NOT NULL,   -- sha256 hex of the runner credential
    registered_at   INTEGER NOT NULL,
    last_seen_at    INTEGER,
    revoked_at      INTEGER
  ) STRICT;

  CREATE TABLE registration_tokens (
    id             TEXT PRIMARY KEY,
    token_hash     TEXT NOT NULL UNIQUE, -- sha256 hex of the one-time token
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER,
    used_by_runner TEXT              -- no foreign key: the runner may be deleted later
  ) STRICT;
  `,
  // 2: the job queue. `attempt` is the fencing token: 0 until the first hand-out, +1 at each.
  // `queue_position` is the submit order (an explicit column: VACUUM may renumber rowids).
  // runner_id has no foreign key: a deleted runner's jobs are recovered by the reaper when
  // their lease expires.
  `
  CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    queue_position   INTEGER NOT NULL UNIQUE,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    runner_id        TEXT,
    spec             TEXT NOT NULL,    -- JSON JobSpec
    timeout_ms       INTEGER NOT NULL,
    cancel_grace_ms  INTEGER NOT NULL,
    required_labels  TEXT NOT NULL,    -- JSON array of strings
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    submitted_at     INTEGER NOT NULL,
    assigned_at      INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    lease_expires_at INTEGER,
    result           TEXT              -- JSON JobResult once applied
  ) STRICT;
  CREATE INDEX jobs_by_status ON jobs (status, queue_position);
  CREATE INDEX jobs_by_runner ON jobs (runner_id) WHERE runner_id IS NOT NULL;

  CREATE TABLE job_logs (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    stream  TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    data    TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
  ) STRICT, WITHOUT ROWID;
  `,
  // 3: device inventory, per runner (device-store.ts). A device the runner removes, or leaves
  // out of a full snapshot, is kept with removed_at set and state 'offline'; only deleting
  // the runner deletes its devices. Jobs may require devices (JSON array of {kind?, id?}).
  `
  CREATE TABLE devices (
    runner_id    TEXT NOT NULL REFERENCES runners (id) ON DELETE CASCADE,
    device_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('online', 'offline', 'unavailable')),
    attributes   TEXT NOT NULL,    -- JSON object
    stale        INTEGER NOT NULL DEFAULT 0,
    fingerprint  TEXT NOT NULL,
    snapshot_id  TEXT,             -- the full snapshot that last upserted it
    removed_at   INTEGER,          -- gone from the runner's inventory (shown offline)
    last_seen_at INTEGER NOT NULL, -- last upsert, or last summary that matched
    updated_at   INTEGER NOT NULL, -- last change of content or presence
    PRIMARY KEY (runner_id, device_id)
  ) STRICT, WITHOUT ROWID;
  CREATE INDEX devices_by_kind ON devices (kind, runner_id);

  ALTER TABLE jobs ADD COLUMN required_devices TEXT NOT NULL DEFAULT '[]';
  `,
  // 4: an admin may pause a runner (no new jobs until resumed). Kept with the runner, so that
  // it survives the runner's reconnects and this control plane's restarts.
  `
  ALTER TABLE runners ADD COLUMN paused_at INTEGER;
  ALTER TABLE runners ADD COLUMN pause_reason TEXT;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

export interface RunnerRecord {
  id: string;
  name: string;
  labels: string[];
  host: HostFacts;
  credentialHash: string;
  registeredAt: Date;
  lastSeenAt: Date | null;
  revokedAt: Date | null;
  /** Set while an admin has the runner paused. */
  pausedAt: Date | null;
  pauseReason: string | null;
}

export interface NewRunner {
  id: string;
  name: string;
  labels: string[];
  host: HostFacts;
  credentialHash: string;
}

export type RegisterOutcome =
  | { outcome: "registered"; runner: RunnerRecord; replaced: RunnerRecord | null }
  | { outcome: "token_invalid" }
  | { outcome: "name_taken" };

interface RunnerRow {
  id: string;
  name: string;
  labels: string;
  host: string;
  credential_hash: string;
  registered_at: number;
  last_seen_at: number | null;
  revoked_at: number | null;
  paused_at: number | null;
  pause_reason: string | null;
}

/**
 * better-sqlite3 is an optional dependency: only the reference control plane needs it, and an
 * agent-only install (`npm ci --omit=optional`) has no C++ toolchain to build it with. Loaded
 * when a store is opened, so the runner's own verbs never touch it.
 */
function loadSqlite(): typeof Database {
  try {
    return createRequire(import.meta.url)("better-sqlite3") as typeof Database;
  } catch (error) {
    throw new RunnerError(
      "usage",
      `the reference control plane needs the optional package better-sqlite3, which this install does not have (${(error as Error).message.split("\n")[0]})`,
      {
        hint: "install it in the runner's directory: npm install better-sqlite3 (it builds with python3, make and a C++ compiler); the agent itself does not need it",
        cause: error,
      },
    );
  }
}

export class ControlPlaneStore {
  private readonly db: Database.Database;
  private readonly statements = new Map<string, Database.Statement>();
  /** The job queue's tables (migration 2). */
  readonly jobs: JobStore;
  /** Devices per runner (migration 3). */
  readonly devices: DeviceStore;

  constructor(path: string) {
    const Sqlite = loadSqlite();
    this.db = new Sqlite(path);
    // WAL lets readers run while a writer commits; `:memory:` ignores it and stays "memory".
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("foreign_keys = ON");
    try {
      migrate(this.db);
    } catch (error) {
      // Refused (a newer schema) or broken: the caller gets no store to close, so close the file here.
      this.db.close();
      throw error;
    }
    this.jobs = new JobStore(this.db, (sql) => this.statement(sql));
    this.devices = new DeviceStore(this.db, (sql) => this.statement(sql));
  }

  /** The schema version of the open database (`PRAGMA user_version`). */
  schemaVersion(): number {
    return this.db.pragma("user_version", { simple: true }) as number;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  // ---- settings ----

  getSetting(key: string): string | undefined {
    const row = this.statement("SELECT value FROM settings WHERE key = ?").get(key) as { value: string } | undefined;
    return row?.value;
  }

  setSetting(key: string, value: string): void {
    this.statement(
      "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    ).run(key, value);
  }

  // ---- registration tokens ----

  insertRegistrationToken(token: { id: string; tokenHash: string; createdAt: Date; expiresAt: Date }): void {
    this.statement("INSERT INTO registration_tokens (id, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?)").run(
      token.id,
      token.tokenHash,
      token.createdAt.getTime(),
      token.expiresAt.getTime(),
    );
  }

  /**
   * Consumes the one-time token `tokenHash` and creates the runner, atomically. The token is
   * checked before the name so that a caller without a valid token learns nothing about
   * which names exist; on `name_taken` the token stays usable. The transaction is IMMEDIATE
   * (it takes the write lock at BEGIN) and the consuming UPDATE is conditional, so two
   * requests with one token, even from two processes on one file, register exactly one runner.
   */
  registerRunner(input: { tokenHash: string; runner: NewRunner; replace: boolean; now: Date }): RegisterOutcome {
    const now = input.now.getTime();
    const register = this.db.transaction((): RegisterOutcome => {
      const token = this.statement(
        "SELECT id FROM registration_tokens WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
      ).get(input.tokenHash, now) as { id: string } | undefined;
      if (!token) return { outcome: "token_invalid" };

      const existing = this.statement("SELECT * FROM runners WHERE name = ?").get(input.runner.name) as
        RunnerRow | undefined;
      if (existing && !input.replace) return { outcome: "name_taken" };

      const consumed = this.statement(
        `UPDATE registration_tokens SET used_at = ?, used_by_runner = ?
         WHERE id = ? AND used_at IS NULL AND expires_at > ?`,
      ).run(now, input.runner.id, token.id, now);
      if (consumed.changes !== 1) return { outcome: "token_invalid" };

      if (existing) this.statement("DELETE FROM runners WHERE id = ?").run(existing.id);
      const { id, name, labels, host, credentialHash } = input.runner;
      this.statement(
        `INSERT INTO runners (id, name, labels, host, credential_hash, registered_at, last_seen_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ).run(id, name, JSON.stringify(labels), JSON.stringify(host), credentialHash, now, now);
      return {
        outcome: "registered",
        runner: this.requireRunner(id),
        replaced: existing ? toRunnerRecord(existing) : null,
      };
    });
    return register.immediate();
  }

  // ---- runners ----

  findRunner(id: string): RunnerRecord | undefined {
    const row = this.statement("SELECT * FROM runners WHERE id = ?").get(id) as RunnerRow | undefined;
    return row ? toRunnerRecord(row) : undefined;
  }

  listRunners(): RunnerRecord[] {
    const rows = this.statement("SELECT * FROM runners ORDER BY name").all() as RunnerRow[];
    return rows.map(toRunnerRecord);
  }

  /** Records that the runner was seen; returns the updated runner, undefined if it is gone. */
  touchRunner(id: string, now: Date): RunnerRecord | undefined {
    this.statement("UPDATE runners SET last_seen_at = ? WHERE id = ?").run(now.getTime(), id);
    return this.findRunner(id);
  }

  /** Binds the runner to new host facts (and marks it seen); undefined if it is gone. */
  rebindRunnerHost(id: string, host: HostFacts, now: Date): RunnerRecord | undefined {
    this.statement("UPDATE runners SET host = ?, last_seen_at = ? WHERE id = ?").run(
      JSON.stringify(host),
      now.getTime(),
      id,
    );
    return this.findRunner(id);
  }

  /** Revokes the runner's credential; revoking twice keeps the first time. */
  revokeRunner(id: string, now: Date): RunnerRecord | undefined {
    this.statement("UPDATE runners SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?").run(now.getTime(), id);
    return this.findRunner(id);
  }

  /** Pauses the runner (keeping the first pause time; the reason is the latest), or resumes it with `null`. */
  setRunnerPaused(id: string, pause: { reason: string; at: Date } | null): RunnerRecord | undefined {
    if (pause) {
      this.statement("UPDATE runners SET paused_at = COALESCE(paused_at, ?), pause_reason = ? WHERE id = ?").run(
        pause.at.getTime(),
        pause.reason,
        id,
      );
    } else {
      this.statement("UPDATE runners SET paused_at = NULL, pause_reason = NULL WHERE id = ?").run(id);
    }
    return this.findRunner(id);
  }

  /** Replaces the runner's registered labels (those that gate jobs). */
  setRunnerLabels(id: string, labels: readonly string[]): RunnerRecord | undefined {
    this.statement("UPDATE runners SET labels = ? WHERE id = ?").run(JSON.stringify(labels), id);
    return this.findRunner(id);
  }

  /** Deletes the runner; false if there was none. */
  deleteRunner(id: string): boolean {
    return this.statement("DELETE FROM runners WHERE id = ?").run(id).changes === 1;
  }

  /** Prepares each SQL text once; better-sqlite3 statements are reusable. */
  private statement(sql: string): Database.Statement {
    let prepared = this.statements.get(sql);
    if (!prepared) {
      prepared = this.db.prepare(sql);
      this.statements.set(sql, prepared);
    }
    return prepared;
  }

  private requireRunner(id: string): RunnerRecord {
    const runner = this.findRunner(id);
    // A bug, not a state a caller can meet: the row was read or written in this transaction.
    if (!runner) throw new RunnerError("internal", `runner ${id} vanished inside its own transaction`);
    return runner;
  }
}

/**
 * Brings the schema up to date. The version is read inside the IMMEDIATE transaction so that
 * two processes opening one file at once cannot both apply the same migration.
 */
function migrate(db: Database.Database): void {
  const applyPending = db.transaction(() => {
    const current = db.pragma("user_version", { simple: true }) as number;
    if (current > MIGRATIONS.length) {
      // A newer runner wrote this file: only a person can upgrade this one (or point it elsewhere).
      throw new RunnerError(
        "needs_operator",
        `the control-plane database has schema version ${current}, newer than this program knows (${MIGRATIONS.length}); upgrade runner`,
      );
    }
    for (let version = current; version < MIGRATIONS.length; version++) {
      db.exec(MIGRATIONS[version]!);
      // user_version cannot be bound as a parameter; `version` is a number we control.
      db.pragma(`user_version = ${version + 1}`);
    }
  });
  applyPending.immediate();
}

/** Rows come from disk: their JSON columns are validated, not trusted. */
function toRunnerRecord(row: RunnerRow): RunnerRecord {
  return {
    id: row.id,
    name: row.name,
    labels: labelsSchema.parse(JSON.parse(row.labels)),
    host: hostFactsSchema.parse(JSON.parse(row.host)),
    credentialHash: row.credential_hash,
    registeredAt: new Date(row.registered_at),
    lastSeenAt: row.last_seen_at === null ? null : new Date(row.last_seen_at),
    revokedAt: row.revoked_at === null ? null : new Date(row.revoked_at),
    pausedAt: row.paused_at === null ? null : new Date(row.paused_at),
    pauseReason: row.pause_reason,
  };
}
