// The device-inventory messages of the channel (protocol v1, a compatible addition), declared
// once: the Device row, the runner's summary and batches, the control plane's ack and resync,
// and the digest both sides compute over (id, fingerprint) pairs. channel.ts adds these
// schemas to its two discriminated unions; PROTOCOL.md ("Devices") specifies them.
import { createHash } from "node:crypto";
import { z } from "zod";
import { withoutNul } from "./common.js";

export const DEVICE_STATES = ["online", "offline", "unavailable"] as const;
export const deviceStateSchema = z.enum(DEVICE_STATES);
export type DeviceState = z.infer<typeof deviceStateSchema>;

/**
 * Bounds on one device and one batch. A device is at most about 11 KB of JSON; the runner
 * also keeps each batch under the frame limit the welcome announces, so a batch may hold
 * fewer rows than its batch size.
 */
export const DEVICE_LIMITS = {
  idChars: 256,
  kindChars: 64,
  nameChars: 256,
  attributes: 32,
  attributeKeyChars: 64,
  attributeValueChars: 256,
  /** Upserts per batch, and removals per batch, whatever the runner's batch size setting says. */
  batchRows: 1000,
} as const;

/**
 * A device id is printable ASCII without spaces, so that "sorted by id" means the same in
 * every language and in SQL's BINARY collation (the digest depends on the order).
 */
export const deviceIdSchema = z
  .string()
  .min(1)
  .max(DEVICE_LIMITS.idChars)
  .regex(/^[\x21-\x7e]+$/, "a device id is printable ASCII without spaces");
export const deviceKindSchema = z
  .string()
  .min(1)
  .max(DEVICE_LIMITS.kindChars)
  .regex(/^[a-z0-9][a-z0-9._-]*$/, "a device kind is lowercase letters, digits, '.', '_' and '-'");
export const attributeValueSchema = z.union([
  withoutNul("an attribute value", DEVICE_LIMITS.attributeValueChars),
  z.number(),
  z.boolean(),
  z.null(),
]);
export type AttributeValue = z.infer<typeof attributeValueSchema>;
export const attributesSchema = z
  .record(withoutNul("an attribute name", DEVICE_LIMITS.attributeKeyChars, 1), attributeValueSchema)
  .refine(
    (attributes) => Object.keys(attributes).length <= DEVICE_LIMITS.attributes,
    `at most ${DEVICE_LIMITS.attributes} attributes`,
  );
/** Opaque to the control plane; the reference runner uses 32 hex chars of a sha256. */
export const fingerprintSchema = z
  .string()
  .min(8)
  .max(128)
  .regex(/^[A-Za-z0-9_-]+$/, "a fingerprint is letters, digits, '_' and '-'");

export const deviceSchema = z.object({
  /** Stable across scans and restarts: a serial, a bus path, or vendor + product + serial. */
  id: deviceIdSchema,
  kind: deviceKindSchema,
  name: withoutNul("a device name", DEVICE_LIMITS.nameChars),
  state: deviceStateSchema,
  attributes: attributesSchema,
  /** The provider that reports it failed this scan: this is its last good row, kept, not confirmed. */
  stale: z.boolean().default(false),
  /** A hash of everything above, computed by the runner: a changed fingerprint is a changed row. */
  fingerprint: fingerprintSchema,
});
export type Device = z.infer<typeof deviceSchema>;

/** What a job may require (POST /admin/jobs `requiredDevices`): a kind, an id, or both. */
export const deviceRequirementSchema = z
  .object({ kind: deviceKindSchema.optional(), id: deviceIdSchema.optional() })
  .refine(
    (requirement) => requirement.kind !== undefined || requirement.id !== undefined,
    "give a device kind, an id, or both",
  );
export type DeviceRequirement = z.infer<typeof deviceRequirementSchema>;

export const batchIdSchema = withoutNul("a batch id", 64, 1);
const batchId = batchIdSchema;

// ---- runner → control plane ----

/** Sent after each welcome: the runner's last CONFIRMED inventory, as a count and a digest. */
export const devicesSummarySchema = z.object({
  type: z.literal("devices_summary"),
  batchId,
  count: z.number().int().min(0),
  /** digestOf the confirmed (id, fingerprint) pairs. */
  digest: z.string().regex(/^[a-f0-9]{64}$/, "a sha256 hex digest"),
});

/**
 * Changed rows. A batch of a full snapshot carries `snapshotId`; when the control plane
 * applies the one with `last: true`, the runner's devices not upserted in that snapshot are
 * marked offline.
 */
export const devicesBatchSchema = z.object({
  type: z.literal("devices"),
  batchId,
  snapshotId: batchId.optional(),
  last: z.boolean().default(true),
  upserts: z.array(deviceSchema).max(DEVICE_LIMITS.batchRows),
  /** Ids of devices that are gone: the control plane marks them offline (it keeps the rows). */
  removals: z.array(deviceIdSchema).max(DEVICE_LIMITS.batchRows),
});

/**
 * A `devices` batch with its rows left unchecked: how a control plane reads a batch that
 * failed devicesBatchSchema, to check each row on its own (PROTOCOL.md, "A batch that fails
 * validation").
 */
export const devicesBatchEnvelopeSchema = devicesBatchSchema.extend({
  upserts: z.array(z.unknown()).max(DEVICE_LIMITS.batchRows),
  removals: z.array(z.unknown()).max(DEVICE_LIMITS.batchRows),
});

/** A row of a `devices` batch naming a device that an earlier row of the same batch names. */
export interface RepeatedDeviceRow {
  list: "upserts" | "removals";
  index: number;
  id: string;
  /** The row that names it first, e.g. `upserts[0]`. */
  first: string;
}

/**
 * The rows of a `devices` batch that name a device id an earlier row of the batch already
 * names (upserts first, then removals, each in order; `null` stands for a row that is invalid
 * anyway). A batch names each device at most once, so that what it means does not depend on
 * the order a control plane applies its rows in: a repeated row is an invalid row (PROTOCOL.md,
 * "A batch that fails validation"). The reference runner's batches come from a map by id.
 */
export function repeatedDeviceRows(
  upsertIds: readonly (string | null)[],
  removalIds: readonly (string | null)[],
): RepeatedDeviceRow[] {
  const firstNamed = new Map<string, string>();
  const repeated: RepeatedDeviceRow[] = [];
  const visit = (list: RepeatedDeviceRow["list"], ids: readonly (string | null)[]) =>
    ids.forEach((id, index) => {
      if (id === null) return;
      const first = firstNamed.get(id);
      if (first === undefined) firstNamed.set(id, `${list}[${index}]`);
      else repeated.push({ list, index, id, first });
    });
  visit("upserts", upsertIds);
  visit("removals", removalIds);
  return repeated;
}

/** How a repeated row is named in an `invalid` detail or a `device_rows_dropped` message. */
export function describeRepeatedRow(row: RepeatedDeviceRow): string {
  return `device id ${JSON.stringify(row.id.slice(0, 64))} is already named by ${row.first}`;
}

// ---- control plane → runner ----

/** The summary matched, or the batch was applied. */
export const devicesAckSchema = z.object({ type: z.literal("devices_ack"), batchId });

/**
 * The control plane's devices for this runner differ from the runner's summary (or it has
 * none, or it could not apply a batch): the runner sends a full snapshot. `batchId` names the
 * message it answers; absent when the control plane asks on its own.
 */
export const devicesResyncSchema = z.object({
  type: z.literal("devices_resync"),
  batchId: batchId.optional(),
  reason: z.string().max(1024),
});

export type DevicesSummaryMessage = z.infer<typeof devicesSummarySchema>;
export type DevicesBatchMessage = z.infer<typeof devicesBatchSchema>;
export type DevicesAckMessage = z.infer<typeof devicesAckSchema>;
export type DevicesResyncMessage = z.infer<typeof devicesResyncSchema>;

// ---- the digest ----

/**
 * sha256 (hex) over "id \t fingerprint \n" for each device, sorted by id (plain byte order;
 * ids are ASCII). The empty inventory's digest is sha256 of the empty string.
 */
export function digestOf(pairs: Iterable<readonly [id: string, fingerprint: string]>): string {
  const sorted = [...pairs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const hash = createHash("sha256");
  for (const [id, fingerprint] of sorted) hash.update(`${id}\t${fingerprint}\n`);
  return hash.digest("hex");
}
