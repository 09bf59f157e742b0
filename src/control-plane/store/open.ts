// Chooses the store's engine: PostgreSQL when a database URL is given, else SQLite in the
// data dir (or in memory). The engines are loaded on demand, so a control plane on SQLite
// never loads `pg`, nor one on PostgreSQL better-sqlite3.
import { RunnerError } from "../../errors.js";
import type { ControlPlaneStore } from "./contract.js";

export interface StoreLocation {
  /** SQLite: the directory of control-plane.sqlite; in memory when absent. */
  dataDir?: string;
  /** PostgreSQL: postgres://… or postgresql://…; wins over dataDir, which must then be absent. */
  databaseUrl?: string;
  /** PostgreSQL: an idle pooled connection failed. */
  onPoolError?: (error: Error) => void;
}

export async function openStore(location: StoreLocation): Promise<ControlPlaneStore> {
  if (location.databaseUrl === undefined) {
    const { openSqliteStore } = await import("./sqlite/engine.js");
    return openSqliteStore(location.dataDir);
  }
  if (location.dataDir !== undefined) {
    throw new RunnerError("usage", "give either a data directory (SQLite) or a database URL (PostgreSQL), not both");
  }
  if (!/^postgres(ql)?:\/\//i.test(location.databaseUrl)) {
    throw new RunnerError("usage", "the database URL must start with postgres:// or postgresql://", {
      hint: "e.g. postgres://runner@db.example:5432/runner (the password in PGPASSWORD)",
    });
  }
  const { openPostgresStore } = await import("./postgres/engine.js");
  return openPostgresStore({ url: location.databaseUrl, onPoolError: location.onPoolError });
}
