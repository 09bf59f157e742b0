// The device sync's durable state: what the control plane last confirmed, as compact
// [id, fingerprint, syncedAt] rows in <state dir>/devices.json (stateFiles().devices), written
// atomically. A file that cannot be read is moved aside and the sync starts from nothing: the
// summary then mismatches and the control plane asks for a full snapshot, so nothing is lost
// but bytes.
import { z } from "zod";
import type { Logger } from "../log/logger.js";
import { moveAside, readJsonFile, writeFileAtomic } from "../state/files.js";
import type { Confirmed, ConfirmedRow } from "./diff.js";

const stateSchema = z.object({
  version: z.literal(1),
  confirmed: z.array(z.tuple([z.string().min(1), z.string().min(1), z.number().int()])),
});

export async function loadConfirmed(file: string, logger: Logger, now = new Date()): Promise<Confirmed> {
  const read = await readJsonFile(file, stateSchema);
  if (read.kind === "missing") return new Map();
  if (read.kind === "invalid") {
    const aside = await moveAside(file, now);
    logger.warn(
      { file, movedTo: aside, reason: read.reason },
      "the device sync state was unreadable; moved aside, starting from nothing",
    );
    return new Map();
  }
  return new Map(
    read.value.confirmed.map(([id, fingerprint, syncedAt]) => [id, { fingerprint, syncedAt } satisfies ConfirmedRow]),
  );
}

export async function saveConfirmed(file: string, confirmed: Confirmed): Promise<void> {
  const rows = [...confirmed].map(([id, row]) => [id, row.fingerprint, row.syncedAt]);
  await writeFileAtomic(file, JSON.stringify({ version: 1, confirmed: rows }) + "\n");
}
