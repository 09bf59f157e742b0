// The SQLite engine: one file (or memory) through better-sqlite3, the embedded default
// (`--data DIR`). The schema evolves by numbered migrations kept in this file and tracked
// with `PRAGMA user_version`. better-sqlite3 is synchronous; this engine wraps each call in a
// Promise for the store contract and runs them one at a time, a transaction included, so that
// another caller's statement never lands inside a transaction that is awaiting its next step.
import { createRequire } from "node:module";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from "node:fs";
import { join } from "node:path";
import type Database from "better-sqlite3";
import { RunnerError } from "../../../errors.js";
import { SqlStore } from "../sql-store.js";
import type { SqlDialect, SqlEngine, SqlRunner, SqlValue } from "../sql.js";
import { localBus, type ReplicaBus } from "../../queue/replica-bus.js";

export const DATABASE_FILE = "control-plane.sqlite";

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
  // 5: limits (issue 12): the bytes and chunks of log each job attempt stored, so that the cap
  // is one conditional upsert and not a SUM over the attempt's chunks at every chunk.
  `
  CREATE TABLE job_log_totals (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    bytes   INTEGER NOT NULL,
    chunks  INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt)
  ) STRICT, WITHOUT ROWID;
  `,
  // 6: the same as PostgreSQL's. One process has no other replica to tell, but the
  // generation column keeps the two schemas alike; the index serves the dispatcher's reads.
  `
  ALTER TABLE runners ADD COLUMN channel_generation INTEGER NOT NULL DEFAULT 0;
  CREATE INDEX jobs_queued_by_requirements ON jobs (required_labels, required_devices, queue_position)
    WHERE status = 'queued';
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

const SQLITE_DIALECT: SqlDialect = {
  // One writer at a time (BEGIN IMMEDIATE / the statement's own lock): MAX + 1 cannot collide.
  nextQueuePosition: "(SELECT COALESCE(MAX(queue_position), 0) + 1 FROM jobs)",
  lockSkipLocked: "",
  notifies: false,
  logData: { param: "CAST(? AS TEXT)", encode: (text) => text, decode: (stored) => stored as string },
};

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

class SqliteEngine implements SqlEngine {
  readonly name = "sqlite";
  readonly dialect = SQLITE_DIALECT;
  private readonly statements = new Map<string, Database.Statement>();
  private readonly direct: SqlRunner;

  constructor(
    private readonly db: Database.Database,
    /** Shared by every engine of this process on the same file (see QUEUES). */
    private readonly queue: TurnQueue,
  ) {
    this.direct = {
      all: <Row>(sql: string, params: readonly SqlValue[] = []) =>
        Promise.resolve(this.statement(sql).all(...params) as Row[]),
      get: <Row>(sql: string, params: readonly SqlValue[] = []) =>
        Promise.resolve(this.statement(sql).get(...params) as Row | undefined),
      run: (sql: string, params: readonly SqlValue[] = []) =>
        Promise.resolve(this.statement(sql).run(...params).changes),
    };
  }

  all<Row>(sql: string, params: readonly SqlValue[] = []): Promise<Row[]> {
    return this.exclusive(() => this.direct.all<Row>(sql, params));
  }

  get<Row>(sql: string, params: readonly SqlValue[] = []): Promise<Row | undefined> {
    return this.exclusive(() => this.direct.get<Row>(sql, params));
  }

  run(sql: string, params: readonly SqlValue[] = []): Promise<number> {
    return this.exclusive(() => this.direct.run(sql, params));
  }

  /** IMMEDIATE: takes the write lock at BEGIN, so two processes on one file serialize here. */
  transaction<T>(work: (tx: SqlRunner) => Promise<T>): Promise<T> {
    return this.exclusive(async () => {
      this.db.exec("BEGIN IMMEDIATE");
      try {
        const result = await work(this.direct);
        this.db.exec("COMMIT");
        return result;
      } catch (error) {
        if (this.db.inTransaction) this.db.exec("ROLLBACK");
        throw error;
      }
    });
  }

  /** One process: it acts on its own changes, and has no other replica to tell. */
  openBus(replicaId: string): Promise<ReplicaBus> {
    return Promise.resolve(localBus(replicaId));
  }

  isUniqueViolation(error: unknown): boolean {
    const code = (error as { code?: unknown } | null)?.code;
    return code === "SQLITE_CONSTRAINT_UNIQUE" || code === "SQLITE_CONSTRAINT_PRIMARYKEY";
  }

  schemaVersion(): Promise<number> {
    return this.exclusive(() => this.db.pragma("user_version", { simple: true }) as number);
  }

  close(): Promise<void> {
    return this.exclusive(() => {
      if (!this.db.open) return;
      this.db.close();
      if (--this.queue.users === 0 && this.queue.file !== undefined) QUEUES.delete(this.queue.file);
    });
  }

  private exclusive<T>(operation: () => T | Promise<T>): Promise<T> {
    const result = this.queue.tail.then(operation);
    this.queue.tail = result.catch(() => undefined);
    return result;
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
}

/**
 * One queue per database file in this process. better-sqlite3 waits for a lock synchronously,
 * blocking the event loop: a second connection of this process starting a transaction while
 * the first one's awaits the next microtask would stall both until the busy timeout. Two
 * stores on one file in one process (tests, benchmarks) therefore take turns here; another
 * process on the file meets SQLite's own lock, held only for the few microtasks a
 * transaction takes.
 */
interface TurnQueue {
  tail: Promise<unknown>;
  users: number;
  /** Undefined for an in-memory database, which no other store can open. */
  file: string | undefined;
}
const QUEUES = new Map<string, TurnQueue>();

function queueFor(file: string | undefined): TurnQueue {
  let queue = file === undefined ? undefined : QUEUES.get(file);
  if (!queue) {
    queue = { tail: Promise.resolve(), users: 0, file };
    if (file !== undefined) QUEUES.set(file, queue);
  }
  queue.users++;
  return queue;
}

/**
 * Opens (creating and migrating) the store in `dataDir`, or in memory. The database file is
 * created 0600 before SQLite opens it, and SQLite gives its -wal and -shm files the database
 * file's mode: the WAL holds recent rows, job env (which may carry secrets) included, so it
 * must not be readable by others whatever the directory's mode. Files an older version left
 * with another mode are set to 0600 too.
 */
export function openSqliteStore(dataDir: string | undefined): SqlStore {
  if (dataDir === undefined) return new SqlStore(new SqliteEngine(openDatabase(":memory:"), queueFor(undefined)));
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const file = join(dataDir, DATABASE_FILE);
  closeSync(openSync(file, "a", 0o600));
  chmodSync(file, 0o600);
  const db = openDatabase(file);
  for (const companion of [`${file}-wal`, `${file}-shm`]) if (existsSync(companion)) chmodSync(companion, 0o600);
  return new SqlStore(new SqliteEngine(db, queueFor(file)));
}

function openDatabase(path: string): Database.Database {
  const Sqlite = loadSqlite();
  const db = new Sqlite(path);
  // WAL lets readers run while a writer commits; `:memory:` ignores it and stays "memory".
  db.pragma("journal_mode = WAL");
  db.pragma("foreign_keys = ON");
  try {
    migrate(db);
  } catch (error) {
    // Refused (a newer schema) or broken: the caller gets no store to close, so close the file here.
    db.close();
    throw error;
  }
  return db;
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
