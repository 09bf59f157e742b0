// What the shared SQL of the store (sql-store.ts, job-store.ts, device-store.ts) needs from
// an engine: run a statement, run several in one transaction, and the few places where the
// two dialects differ.
//
// Why hand-written SQL behind one interface and no query builder: the queries are few (about
// forty), each is one conditional statement whose WHERE clause IS the concurrency rule (claim
// only `status = 'queued'`, fence on `attempt = ?`), and keeping that text visible is worth
// more than hiding it. SQLite (3.35+) and PostgreSQL both speak `RETURNING`, `ON CONFLICT ...
// DO NOTHING/UPDATE` and `CAST`, so one text serves both; the differences are parametrized
// here: placeholders (`?`, rewritten to `$n` by the PostgreSQL engine), log text (PostgreSQL's
// TEXT refuses the NUL character a process may print, so its logs are BYTEA), the submit order
// (a MAX+1 under SQLite's one writer; a sequence under PostgreSQL's many), row locking
// (`FOR UPDATE SKIP LOCKED` on PostgreSQL, where a second claimer skips a job being claimed
// instead of waiting for it; SQLite has one writer, so nothing to lock), and the DDL of the
// migrations, kept per engine. Parameters whose type the statement alone does not fix are
// written `CAST(? AS ...)`, which both engines read the same way.

import type { Logger } from "../../log/logger.js";
import type { ReplicaBus, ReplicaBusHandlers } from "../queue/replica-bus.js";

export type SqlValue = string | number | Buffer | null;

export interface SqlRunner {
  /** Every row of the statement. */
  all<Row>(sql: string, params?: readonly SqlValue[]): Promise<Row[]>;
  /** The first row, or undefined. */
  get<Row>(sql: string, params?: readonly SqlValue[]): Promise<Row | undefined>;
  /** Runs the statement; returns the number of rows it changed. */
  run(sql: string, params?: readonly SqlValue[]): Promise<number>;
}

export interface SqlDialect {
  /** An expression giving a new job's queue_position. */
  readonly nextQueuePosition: string;
  /** Appended to a SELECT whose rows are about to be changed by a claim. */
  readonly lockSkipLocked: string;
  /** Whether statements may call `pg_notify` (PostgreSQL); SQLite has no one to notify. */
  readonly notifies: boolean;
  /** A log chunk's text as stored, the placeholder that takes it, and back. */
  readonly logData: { param: string; encode(text: string): SqlValue; decode(stored: unknown): string };
}

export interface SqlEngine extends SqlRunner {
  readonly name: "sqlite" | "postgres";
  readonly dialect: SqlDialect;
  /**
   * Runs `work` in one transaction (committed when it resolves, rolled back when it throws);
   * its statements go through `tx`, and nothing else runs on that connection meanwhile.
   */
  transaction<T>(work: (tx: SqlRunner) => Promise<T>): Promise<T>;
  /** The replicas' bus: NOTIFY/LISTEN on PostgreSQL; on SQLite (one process) a bus with no one to tell. */
  openBus(replicaId: string, handlers: ReplicaBusHandlers, logger: Logger): Promise<ReplicaBus>;
  /** Whether the error is a UNIQUE constraint violation. */
  isUniqueViolation(error: unknown): boolean;
  schemaVersion(): Promise<number>;
  close(): Promise<void>;
}
