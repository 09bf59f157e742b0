// The PostgreSQL engine (`--database postgres://…`): a pool of connections through `pg`, for
// one or several control-plane replicas sharing one database. The queries are the shared ones
// (sql-store.ts, job-store.ts, device-store.ts), with `?` rewritten to `$1, $2, …`; the
// schema has its own versioned migrations here (PostgreSQL's DDL differs from SQLite's),
// recorded in `schema_migrations` and applied at start inside one transaction that first
// takes a transaction-level advisory lock: replicas starting at once on an empty database
// apply each migration once, the others wait and then find nothing to do.
// The connection URL may hold a password: it never reaches a log line or an error message.
import type { Client, Pool, PoolClient, QueryResultRow } from "pg";
import type { Logger } from "../../../log/logger.js";
import type { ReplicaBus, ReplicaBusHandlers } from "../../queue/replica-bus.js";
import { RunnerError } from "../../../errors.js";
import { describeDatabaseUrl } from "../describe-url.js";
import { SqlStore } from "../sql-store.js";
import type { SqlDialect, SqlEngine, SqlRunner, SqlValue } from "../sql.js";

/**
 * Migration N (1-based) brings the schema from version N-1 to N. Append only: a migration
 * that has shipped is never edited. Times are integer milliseconds since the epoch (BIGINT),
 * JSON is kept as TEXT (validated on read, as with SQLite), flags are 0/1 INTEGERs: the rows
 * look the same to the shared queries whichever engine holds them.
 */
export const PG_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  );

  CREATE TABLE runners (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    labels          TEXT NOT NULL,
    host            TEXT NOT NULL,
    credential_hash TEXT NOT NULL,
    registered_at   BIGINT NOT NULL,
    last_seen_at    BIGINT,
    revoked_at      BIGINT,
    paused_at       BIGINT,
    pause_reason    TEXT
  );

  CREATE TABLE registration_tokens (
    id             TEXT PRIMARY KEY,
    token_hash     TEXT NOT NULL UNIQUE,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT,
    used_by_runner TEXT
  );

  -- Submit order across replicas: a sequence, never MAX + 1 (two replicas would collide).
  CREATE SEQUENCE jobs_queue_position;
  CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    queue_position   BIGINT NOT NULL UNIQUE,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    runner_id        TEXT,
    spec             TEXT NOT NULL,
    timeout_ms       BIGINT NOT NULL,
    cancel_grace_ms  BIGINT NOT NULL,
    required_labels  TEXT NOT NULL,
    required_devices TEXT NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    submitted_at     BIGINT NOT NULL,
    assigned_at      BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    lease_expires_at BIGINT,
    result           TEXT
  );
  CREATE INDEX jobs_by_status ON jobs (status, queue_position);
  CREATE INDEX jobs_by_runner ON jobs (runner_id) WHERE runner_id IS NOT NULL;
  CREATE INDEX jobs_by_lease ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;

  CREATE TABLE job_logs (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    seq     BIGINT NOT NULL,
    stream  TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    data    BYTEA NOT NULL,  -- UTF-8: TEXT cannot hold a NUL character
    PRIMARY KEY (job_id, attempt, seq)
  );

  CREATE TABLE devices (
    runner_id    TEXT NOT NULL REFERENCES runners (id) ON DELETE CASCADE,
    device_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('online', 'offline', 'unavailable')),
    attributes   TEXT NOT NULL,
    stale        INTEGER NOT NULL DEFAULT 0,
    fingerprint  TEXT NOT NULL,
    snapshot_id  TEXT,
    removed_at   BIGINT,
    last_seen_at BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (runner_id, device_id)
  );
  CREATE INDEX devices_by_kind ON devices (kind, runner_id);
  `,
  // 5: limits (issue 12): the log each job attempt stored (see the SQLite migration).
  `
  CREATE TABLE job_log_totals (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    bytes   BIGINT NOT NULL,
    chunks  BIGINT NOT NULL,
    PRIMARY KEY (job_id, attempt)
  );
  `,
  // 6: replicas. A runner's channel generation, raised by every new connection with one
  // conditional UPDATE: the replica holding an older connection closes it (4000). The index
  // of queued jobs by their requirements lets a dispatcher read only the jobs a runner can take.
  `
  ALTER TABLE runners ADD COLUMN channel_generation BIGINT NOT NULL DEFAULT 0;
  CREATE INDEX jobs_queued_by_requirements ON jobs (required_labels, required_devices, queue_position)
    WHERE status = 'queued';
  `,
];

export const PG_SCHEMA_VERSION = PG_MIGRATIONS.length;

/** The advisory lock every replica takes around its migrations (any fixed 64-bit key; this one spells "runner"). */
const MIGRATION_LOCK_KEY = "125848689468786"; // 0x72756e6e6572

const POSTGRES_DIALECT: SqlDialect = {
  nextQueuePosition: "nextval('jobs_queue_position')",
  // A second claimer skips a row another transaction is claiming rather than waiting for it.
  lockSkipLocked: " FOR UPDATE SKIP LOCKED",
  notifies: true,
  // UTF-8 bytes: TEXT cannot hold the NUL character a process may print.
  logData: {
    param: "CAST(? AS BYTEA)",
    encode: (text) => Buffer.from(text, "utf8"),
    decode: (stored) => (stored as Buffer).toString("utf8"),
  },
};

/** The application_name of each replica's LISTEN connection (pg_stat_activity shows it). */
export const LISTENER_APPLICATION_NAME = "runner-control-plane-listener";

/** The PostgreSQL error code of a UNIQUE violation. */
const UNIQUE_VIOLATION = "23505";

/** `?` → `$1, $2, …`, once per SQL text. The shared queries never hold a `?` inside a string literal. */
const numbered = new Map<string, string>();
function toNumberedPlaceholders(sql: string): string {
  let text = numbered.get(sql);
  if (text === undefined) {
    let n = 0;
    text = sql.replace(/\?/g, () => `$${++n}`);
    numbered.set(sql, text);
  }
  return text;
}

function runnerOn(
  query: (sql: string, params: readonly SqlValue[]) => Promise<{ rows: unknown[]; rowCount: number | null }>,
): SqlRunner {
  return {
    all: async <Row>(sql: string, params: readonly SqlValue[] = []) => (await query(sql, params)).rows as Row[],
    get: async <Row>(sql: string, params: readonly SqlValue[] = []) =>
      (await query(sql, params)).rows[0] as Row | undefined,
    run: async (sql: string, params: readonly SqlValue[] = []) => (await query(sql, params)).rowCount ?? 0,
  };
}

function clientQuery(client: Pool | PoolClient) {
  return (sql: string, params: readonly SqlValue[]) =>
    client.query<QueryResultRow>(toNumberedPlaceholders(sql), [...params]);
}

class PostgresEngine implements SqlEngine {
  readonly name = "postgres";
  readonly dialect = POSTGRES_DIALECT;
  private readonly pooled: SqlRunner;

  constructor(
    private readonly pool: Pool,
    private readonly newClient: () => Client,
  ) {
    this.pooled = runnerOn(clientQuery(pool));
  }

  async openBus(replicaId: string, handlers: ReplicaBusHandlers, logger: Logger): Promise<ReplicaBus> {
    const { openPostgresBus } = await import("./notifications.js");
    return openPostgresBus({ replicaId, handlers, logger, pool: this.pool, newClient: this.newClient });
  }

  all<Row>(sql: string, params?: readonly SqlValue[]): Promise<Row[]> {
    return this.pooled.all<Row>(sql, params);
  }

  get<Row>(sql: string, params?: readonly SqlValue[]): Promise<Row | undefined> {
    return this.pooled.get<Row>(sql, params);
  }

  run(sql: string, params?: readonly SqlValue[]): Promise<number> {
    return this.pooled.run(sql, params);
  }

  /** READ COMMITTED on one pooled connection: each conditional UPDATE re-checks its WHERE against the latest row. */
  async transaction<T>(work: (tx: SqlRunner) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    try {
      await client.query("BEGIN");
      try {
        const result = await work(runnerOn(clientQuery(client)));
        await client.query("COMMIT");
        return result;
      } catch (error) {
        await client.query("ROLLBACK").catch(() => undefined);
        throw error;
      }
    } finally {
      client.release();
    }
  }

  isUniqueViolation(error: unknown): boolean {
    return (error as { code?: unknown } | null)?.code === UNIQUE_VIOLATION;
  }

  async schemaVersion(): Promise<number> {
    const row = await this.get<{ version: number | null }>("SELECT MAX(version) AS version FROM schema_migrations");
    return row?.version ?? 0;
  }

  close(): Promise<void> {
    return this.pool.end();
  }
}

export interface PostgresStoreOptions {
  /** postgres://[user[:password]@]host[:port]/database[?…] */
  url: string;
  /** Connections this process keeps at most. Default 10. */
  maxConnections?: number;
  /** An idle pooled connection failed (the server restarted, say): logged, never thrown. */
  onPoolError?: (error: Error) => void;
}

/** Connects, applies pending migrations (one replica at a time) and returns the store. */
export async function openPostgresStore(options: PostgresStoreOptions): Promise<SqlStore> {
  // Loaded here: only a control plane on PostgreSQL needs `pg`.
  const { default: pg } = await import("pg");
  // BIGINT (int8) comes back as a string by default; every BIGINT here is a time, a count or a
  // position, far below 2^53, so a number is exact and what the shared row types expect.
  const types = new pg.TypeOverrides();
  types.setTypeParser(pg.types.builtins.INT8, (value: string) => Number(value));
  const pool = new pg.Pool({ connectionString: options.url, max: options.maxConnections ?? 10, types });
  // The replicas' listener: its own session (LISTEN belongs to one), kept alive through NATs.
  // Named, so that an operator sees it in pg_stat_activity.
  const newClient = () =>
    new pg.Client({
      connectionString: options.url,
      types,
      keepAlive: true,
      application_name: LISTENER_APPLICATION_NAME,
    });
  pool.on("error", (error) => options.onPoolError?.(error));
  try {
    await migrate(pool);
  } catch (error) {
    await pool.end().catch(() => undefined);
    if (error instanceof RunnerError) throw error;
    throw new RunnerError(
      "database_unavailable",
      `cannot open the control-plane database ${describeDatabaseUrl(options.url)}: ${(error as Error).message}`,
      {
        cause: error,
        hint: "check that PostgreSQL is running and reachable, the database exists, and the user may create tables in it",
      },
    );
  }
  return new SqlStore(new PostgresEngine(pool, newClient));
}

async function migrate(pool: Pool): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    try {
      // Held until COMMIT/ROLLBACK: a second replica starting now waits here, then sees the new version.
      await client.query("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK_KEY]);
      await client.query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
      );
      const { rows } = await client.query<{ version: number | null }>(
        "SELECT MAX(version) AS version FROM schema_migrations",
      );
      const current = rows[0]?.version ?? 0;
      if (current > PG_MIGRATIONS.length) {
        throw new RunnerError(
          "needs_operator",
          `the control-plane database has schema version ${current}, newer than this program knows (${PG_MIGRATIONS.length}); upgrade runner`,
        );
      }
      for (let version = current; version < PG_MIGRATIONS.length; version++) {
        await client.query(PG_MIGRATIONS[version]!);
        await client.query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)", [
          version + 1,
          Date.now(),
        ]);
      }
      await client.query("COMMIT");
    } catch (error) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw error;
    }
  } finally {
    client.release();
  }
}
