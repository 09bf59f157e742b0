// The store of the reference control plane over either engine (sql.ts): settings,
// registration tokens and runners here; the job queue's SQL in job-store.ts (`store.jobs`),
// the devices' in device-store.ts (`store.devices`). The engine (sqlite/engine.ts or
// postgres/engine.ts) owns the connection and the migrations; this file owns the queries,
// written once for both.
import { hostFactsSchema, labelsSchema, type HostFacts } from "../../protocol/http.js";
import { RunnerError } from "../../errors.js";
import type { ControlPlaneStore, NewRunner, RegisterOutcome, RunnerRecord, StoreEngineName } from "./contract.js";
import { SqlDeviceStore } from "./device-store.js";
import { SqlJobStore } from "./job-store.js";
import type { SqlEngine, SqlRunner } from "./sql.js";
import type { Logger } from "../../log/logger.js";
import type { ReplicaBus, ReplicaBusHandlers } from "../queue/replica-bus.js";

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

export class SqlStore implements ControlPlaneStore {
  readonly engine: StoreEngineName;
  readonly jobs: SqlJobStore;
  readonly devices: SqlDeviceStore;

  constructor(private readonly db: SqlEngine) {
    this.engine = db.name;
    this.jobs = new SqlJobStore(db);
    this.devices = new SqlDeviceStore(db);
  }

  schemaVersion(): Promise<number> {
    return this.db.schemaVersion();
  }

  close(): Promise<void> {
    return this.db.close();
  }

  openBus(replicaId: string, handlers: ReplicaBusHandlers, logger: Logger): Promise<ReplicaBus> {
    return this.db.openBus(replicaId, handlers, logger);
  }

  // ---- settings ----

  async getSetting(key: string): Promise<string | undefined> {
    return (await this.db.get<{ value: string }>("SELECT value FROM settings WHERE key = ?", [key]))?.value;
  }

  async setSetting(key: string, value: string): Promise<void> {
    await this.db.run(
      "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      [key, value],
    );
  }

  async insertSettingIfAbsent(key: string, value: string): Promise<boolean> {
    return (
      (await this.db.run("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", [
        key,
        value,
      ])) === 1
    );
  }

  // ---- registration tokens ----

  async insertRegistrationToken(token: { id: string; tokenHash: string; createdAt: Date; expiresAt: Date }) {
    await this.db.run("INSERT INTO registration_tokens (id, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?)", [
      token.id,
      token.tokenHash,
      token.createdAt.getTime(),
      token.expiresAt.getTime(),
    ]);
  }

  /**
   * One transaction, and the consuming UPDATE is conditional: two requests with one token,
   * even on two replicas, register exactly one runner (the second UPDATE finds the token used).
   * Under SQLite the transaction takes the write lock at BEGIN, so two registrations of one
   * name queue up; under PostgreSQL the second INSERT of a name meets the first's row instead,
   * and its whole transaction (token included) rolls back: that is `name_taken` too.
   */
  async registerRunner(input: {
    tokenHash: string;
    runner: NewRunner;
    replace: boolean;
    now: Date;
  }): Promise<RegisterOutcome> {
    const now = input.now.getTime();
    try {
      return await this.db.transaction(async (tx): Promise<RegisterOutcome> => {
        const token = await tx.get<{ id: string }>(
          "SELECT id FROM registration_tokens WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
          [input.tokenHash, now],
        );
        if (!token) return { outcome: "token_invalid" };

        const existing = await tx.get<RunnerRow>("SELECT * FROM runners WHERE name = ?", [input.runner.name]);
        if (existing && !input.replace) return { outcome: "name_taken" };

        const consumed = await tx.run(
          `UPDATE registration_tokens SET used_at = ?, used_by_runner = ?
           WHERE id = ? AND used_at IS NULL AND expires_at > ?`,
          [now, input.runner.id, token.id, now],
        );
        if (consumed !== 1) return { outcome: "token_invalid" };

        if (existing) await tx.run("DELETE FROM runners WHERE id = ?", [existing.id]);
        const { id, name, labels, host, credentialHash } = input.runner;
        const row = await tx.get<RunnerRow>(
          `INSERT INTO runners (id, name, labels, host, credential_hash, registered_at, last_seen_at)
           VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *`,
          [id, name, JSON.stringify(labels), JSON.stringify(host), credentialHash, now, now],
        );
        return {
          outcome: "registered",
          runner: toRunnerRecord(requireRow(row, id)),
          replaced: existing ? toRunnerRecord(existing) : null,
        };
      });
    } catch (error) {
      if (this.db.isUniqueViolation(error)) return { outcome: "name_taken" };
      throw error;
    }
  }

  async registrationTokenUsable(tokenHash: string, now: Date): Promise<boolean> {
    const row = await this.db.get<{ id: string }>(
      "SELECT id FROM registration_tokens WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
      [tokenHash, now.getTime()],
    );
    return row !== undefined;
  }

  // ---- runners ----

  async findRunner(id: string): Promise<RunnerRecord | undefined> {
    return optionalRunner(await this.db.get<RunnerRow>("SELECT * FROM runners WHERE id = ?", [id]));
  }

  async listRunners(page?: { afterName?: string; limit: number }): Promise<RunnerRecord[]> {
    // Only with a cursor is there a WHERE: the page is then a range of the name index.
    const afterName = page?.afterName;
    const rows = await this.db.all<RunnerRow>(
      `SELECT * FROM runners${afterName !== undefined ? " WHERE name > ?" : ""} ORDER BY name${page ? " LIMIT ?" : ""}`,
      [...(afterName !== undefined ? [afterName] : []), ...(page ? [page.limit] : [])],
    );
    return rows.map(toRunnerRecord);
  }

  async openChannelGeneration(id: string, now: Date): Promise<number | undefined> {
    const row = await this.db.get<{ generation: number }>(
      `UPDATE runners SET channel_generation = channel_generation + 1, last_seen_at = ?
       WHERE id = ? RETURNING channel_generation AS generation`,
      [now.getTime(), id],
    );
    return row?.generation;
  }

  async channelGeneration(id: string): Promise<number | undefined> {
    const row = await this.db.get<{ generation: number }>(
      "SELECT channel_generation AS generation FROM runners WHERE id = ?",
      [id],
    );
    return row?.generation;
  }

  touchRunner(id: string, now: Date): Promise<RunnerRecord | undefined> {
    return updateRunner(this.db, "last_seen_at = ?", [now.getTime()], id);
  }

  rebindRunnerHost(id: string, host: HostFacts, now: Date): Promise<RunnerRecord | undefined> {
    return updateRunner(this.db, "host = ?, last_seen_at = ?", [JSON.stringify(host), now.getTime()], id);
  }

  revokeRunner(id: string, now: Date): Promise<RunnerRecord | undefined> {
    return updateRunner(this.db, "revoked_at = COALESCE(revoked_at, ?)", [now.getTime()], id);
  }

  setRunnerPaused(id: string, pause: { reason: string; at: Date } | null): Promise<RunnerRecord | undefined> {
    return pause
      ? updateRunner(
          this.db,
          "paused_at = COALESCE(paused_at, ?), pause_reason = ?",
          [pause.at.getTime(), pause.reason],
          id,
        )
      : updateRunner(this.db, "paused_at = NULL, pause_reason = NULL", [], id);
  }

  setRunnerLabels(id: string, labels: readonly string[]): Promise<RunnerRecord | undefined> {
    return updateRunner(this.db, "labels = ?", [JSON.stringify(labels)], id);
  }

  async deleteRunner(id: string): Promise<boolean> {
    return (await this.db.run("DELETE FROM runners WHERE id = ?", [id])) === 1;
  }
}

/** One UPDATE ... RETURNING: the caller gets the row as this change left it, whatever ran meanwhile. */
async function updateRunner(
  db: SqlRunner,
  set: string,
  params: (string | number)[],
  id: string,
): Promise<RunnerRecord | undefined> {
  return optionalRunner(await db.get<RunnerRow>(`UPDATE runners SET ${set} WHERE id = ? RETURNING *`, [...params, id]));
}

function requireRow(row: RunnerRow | undefined, id: string): RunnerRow {
  // A bug, not a state a caller can meet: the row was written by this very statement.
  if (!row) throw new RunnerError("internal", `runner ${id} vanished inside its own transaction`);
  return row;
}

function optionalRunner(row: RunnerRow | undefined): RunnerRecord | undefined {
  return row === undefined ? undefined : toRunnerRecord(row);
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
