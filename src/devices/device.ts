// A device row as providers produce it (RawDevice) and as it is synced (Device): ids, kinds
// and attributes normalized to the protocol's bounds, and a fingerprint of the content so a
// changed row is one string comparison away.
import { createHash } from "node:crypto";
import { DEVICE_LIMITS, type AttributeValue, type Device, type DeviceState } from "../protocol/devices.js";

export type { Device, DeviceState, AttributeValue };

/** What a provider reports. Anything that changes from scan to scan by itself (temperatures, load, transport ids) must stay out. */
export interface RawDevice {
  id: string;
  kind: string;
  name: string;
  state: DeviceState;
  attributes: Record<string, AttributeValue | undefined>;
}

/** Normalizes a provider's row to the protocol's bounds and computes its fingerprint. */
export function toDevice(raw: RawDevice, stale = false): Device {
  const content = {
    id: normalizeId(raw.id),
    kind: normalizeKind(raw.kind),
    name: truncate(dropNul(raw.name).trim(), DEVICE_LIMITS.nameChars),
    state: raw.state,
    attributes: normalizeAttributes(raw.attributes),
    stale,
  };
  return { ...content, fingerprint: fingerprintOf(content) };
}

/** The same device, marked as kept from an earlier scan (its provider failed this one). */
export function markStale(device: Device): Device {
  if (device.stale) return device;
  const { fingerprint: _old, ...content } = device;
  const stale = { ...content, stale: true };
  return { ...stale, fingerprint: fingerprintOf(stale) };
}

/**
 * 32 hex chars (128 bits) of a sha256 over the content. The id is not part of it (rows are
 * compared per id) but staleness is: a row going stale, or fresh again, is a change to sync.
 */
export function fingerprintOf(content: Omit<Device, "fingerprint" | "id">): string {
  const attributes = Object.entries(content.attributes).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const canonical = JSON.stringify([content.kind, content.name, content.state, content.stale, attributes]);
  return createHash("sha256").update(canonical).digest("hex").slice(0, 32);
}

/** Printable ASCII without spaces (the protocol's rule): anything else becomes "_". */
export function normalizeId(id: string): string {
  const cleaned = id.trim().replace(/[^\x21-\x7e]/g, "_");
  return truncate(cleaned.length > 0 ? cleaned : "_", DEVICE_LIMITS.idChars);
}

function normalizeKind(kind: string): string {
  const cleaned = kind
    .trim()
    .toLowerCase()
    .replace(/[^a-z0-9._-]/g, "-")
    .replace(/^[^a-z0-9]+/, "");
  return truncate(cleaned.length > 0 ? cleaned : "unknown", DEVICE_LIMITS.kindChars);
}

/** Drops undefined values, bounds keys, values and count (sorted, so the kept ones are stable). */
function normalizeAttributes(attributes: Record<string, AttributeValue | undefined>): Record<string, AttributeValue> {
  const out: Record<string, AttributeValue> = {};
  const keys = Object.keys(attributes)
    .filter((key) => attributes[key] !== undefined && dropNul(key).length > 0)
    .sort();
  for (const key of keys.slice(0, DEVICE_LIMITS.attributes)) {
    const value = attributes[key]!;
    const bounded = truncate(dropNul(key), DEVICE_LIMITS.attributeKeyChars);
    if (typeof value === "string") out[bounded] = truncate(dropNul(value).trim(), DEVICE_LIMITS.attributeValueChars);
    else if (typeof value === "number") out[bounded] = Number.isFinite(value) ? value : null;
    else out[bounded] = value;
  }
  return out;
}

/** The protocol refuses U+0000 in a device's name and attributes (a database may not hold it): dropped here. */
function dropNul(text: string): string {
  return text.replaceAll("\0", "");
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : text.slice(0, max);
}
