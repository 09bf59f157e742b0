// Secrets and ids of the reference control plane. Every secret is 32 random bytes in
// base64url behind a prefix that says what it is (so a leaked string can be recognised and
// a token pasted into the wrong place gives a clear error). Only sha256 hashes are stored.
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

export const TOKEN_PREFIX = {
  registration: "rgt_",
  credential: "rnc_",
  admin: "adm_",
} as const;
export type TokenKind = keyof typeof TOKEN_PREFIX;

const ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
// The largest multiple of 62 below 256: bytes at or above it are dropped so that every
// character is equally likely (a plain `byte % 62` would favour the first 8 characters).
const UNBIASED_BYTE_LIMIT = 256 - (256 % ALPHANUMERIC.length);

/** A new secret of the given kind: prefix + 32 random bytes in base64url. */
export function generateToken(kind: TokenKind): string {
  return TOKEN_PREFIX[kind] + randomBytes(32).toString("base64url");
}

/** `length` random characters from [A-Za-z0-9], without modulo bias. */
export function generateAlphanumeric(length: number): string {
  let out = "";
  while (out.length < length) {
    for (const byte of randomBytes(length * 2)) {
      if (byte >= UNBIASED_BYTE_LIMIT) continue;
      out += ALPHANUMERIC[byte % ALPHANUMERIC.length];
      if (out.length === length) break;
    }
  }
  return out;
}

/** A runner id: "rnr_" + 24 random alphanumeric characters. Not a secret. */
export function generateRunnerId(): string {
  return "rnr_" + generateAlphanumeric(24);
}

/** A registration token's public id (what admins see and logs may show). Not a secret. */
export function generateTokenId(): string {
  return "rgi_" + generateAlphanumeric(24);
}

/** The sha256 of a secret, lowercase hex: the only form in which secrets are stored. */
export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret, "utf8").digest("hex");
}

/**
 * Whether `secret` hashes to `storedHash`, compared in constant time. Comparing hashes
 * (always 32 bytes) rather than the secrets also hides the secret's length.
 */
export function secretMatchesHash(secret: string, storedHash: string): boolean {
  const expected = Buffer.from(storedHash, "hex");
  const actual = Buffer.from(hashSecret(secret), "hex");
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}
