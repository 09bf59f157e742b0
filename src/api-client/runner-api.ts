// The agent's side of the runner HTTP API: register, verify, repair. Every answer is checked
// against its schema, and every failure becomes a RunnerError whose code says what it means
// for the runner (revoked, deleted, moved host, upgrade, unreachable...).
import type { z } from "zod";
import { RunnerError, type ErrorCode } from "../errors.js";
import {
  API_PREFIX,
  ERROR_CODES,
  errorBodySchema,
  type ApiErrorCode,
  registerResponseSchema,
  repairResponseSchema,
  verifyResponseSchema,
  type RegisterRequest,
  type RegisterResponse,
  type RepairRequest,
  type RepairResponse,
  type UnregisterRequest,
  unregisterResponseSchema,
  type VerifyRequest,
  type VerifyResponse,
} from "../protocol/http.js";

export interface ApiOptions {
  url: string;
  timeoutMs: number;
}

export function register(
  options: ApiOptions,
  registrationToken: string,
  body: RegisterRequest,
): Promise<RegisterResponse> {
  return call(options, "/runners/register", registrationToken, body, registerResponseSchema);
}

export function verify(options: ApiOptions, credential: string, body: VerifyRequest): Promise<VerifyResponse> {
  return call(options, "/runners/verify", credential, body, verifyResponseSchema);
}

export function repair(options: ApiOptions, credential: string, body: RepairRequest): Promise<RepairResponse> {
  return call(options, "/runners/repair", credential, body, repairResponseSchema);
}

/** No answer this API gives is near this size; a larger body is not read to the end. */
const MAX_BODY_BYTES = 256 * 1024;
/** How much of an unexpected body a person sees in the error message. */
const BODY_EXCERPT_CHARS = 200;

async function call<T>(
  options: ApiOptions,
  route: string,
  bearer: string,
  body: unknown,
  schema: z.ZodType<T>,
): Promise<T> {
  const target = new URL(API_PREFIX + route, options.url);
  const unreachable = (reason: string, cause: unknown) =>
    new RunnerError("control_plane_unavailable", `cannot reach the control plane at ${options.url}: ${reason}`, {
      cause,
    });
  const timedOut = (error: unknown) => (error as Error).name === "TimeoutError";
  let response: Response;
  try {
    response = await fetch(target, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${bearer}` },
      body: JSON.stringify(body),
      // A redirect is reported, not followed: the bearer token must go only where configured.
      redirect: "manual",
      signal: AbortSignal.timeout(options.timeoutMs),
    });
  } catch (error) {
    throw unreachable(timedOut(error) ? `no answer within ${options.timeoutMs} ms` : causeText(error), error);
  }
  let text: string;
  try {
    text = await readCapped(response);
  } catch (error) {
    // The timeout covers the body too: a server that sends headers and then stalls.
    throw unreachable(timedOut(error) ? `no complete answer within ${options.timeoutMs} ms` : causeText(error), error);
  }
  const json = parseJson(text);
  if (response.ok) {
    const parsed = schema.safeParse(json);
    if (parsed.success) return parsed.data;
    throw new RunnerError(
      "control_plane_rejected",
      `the control plane at ${options.url} sent an answer this runner does not understand (${route}, HTTP ${response.status}: ${excerpt(text, bearer)})`,
      { hint: "check that --url names a runner control plane" },
    );
  }
  throw errorFor(response, json === undefined ? text : json, options.url, bearer);
}

/** The body as text, at most MAX_BODY_BYTES of it (a hostile or broken server can send any amount). */
async function readCapped(response: Response): Promise<string> {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.byteLength;
    if (size >= MAX_BODY_BYTES) {
      await reader.cancel();
      break;
    }
  }
  return Buffer.concat(chunks).subarray(0, MAX_BODY_BYTES).toString("utf8");
}

/**
 * What a status means when the body is not one of the protocol's errors (a proxy's HTML page,
 * plain text, nothing): PROTOCOL.md, "Errors". 408 and 429 are "try again later", like 5xx.
 */
function codeForStatus(status: number): ErrorCode {
  if (status === 426) return "upgrade_required";
  if (status >= 500 || status === 408 || status === 429) return "control_plane_unavailable";
  if (status === 401 || status === 403 || status === 404) return "control_plane_refused";
  return "control_plane_rejected";
}

/** What each of the protocol's error codes means for the runner. */
const codeForApiError: Record<ApiErrorCode, ErrorCode> = {
  bad_request: "control_plane_rejected",
  // A credential the control plane does not accept for this runner: as good as revoked.
  unauthorized: "credential_revoked",
  registration_token_invalid: "registration_token_invalid",
  credential_revoked: "credential_revoked",
  runner_not_found: "runner_deleted",
  not_found: "control_plane_refused",
  name_taken: "control_plane_rejected",
  host_fingerprint_mismatch: "host_fingerprint_mismatch",
  payload_too_large: "control_plane_rejected",
  upgrade_required: "upgrade_required",
  internal: "control_plane_unavailable",
};

const hints: Partial<Record<ErrorCode, string>> = {
  registration_token_invalid:
    "ask an admin for a new registration token (each one works once, and only until it expires)",
  control_plane_refused:
    "check --url (it must name the control plane itself, not a proxy's login page) and the credential",
};

function apiErrorCode(code: string): ApiErrorCode | null {
  return ERROR_CODES.find((known) => known === code) ?? null;
}

function errorFor(response: Response, body: unknown, url: string, bearer: string): RunnerError {
  const status = response.status;
  const known = errorBodySchema.safeParse(body);
  const apiCode = known.success ? apiErrorCode(known.data.error.code) : null;
  // The status decides what an unknown body means; a 5xx or 426 means the same whatever the body says.
  const byStatus = codeForStatus(status);
  const mapped: ErrorCode =
    byStatus === "upgrade_required" || byStatus === "control_plane_unavailable" || apiCode === null
      ? byStatus
      : codeForApiError[apiCode];
  if (mapped === "registration_token_invalid") {
    return new RunnerError(
      mapped,
      `the control plane at ${url} refused the registration token: it is unknown, already used or expired`,
      { hint: hints[mapped] },
    );
  }
  const location = response.headers.get("location");
  const said =
    apiCode !== null && known.success
      ? `${apiCode}: ${excerpt(known.data.error.message, bearer)}`
      : status >= 300 && status < 400
        ? `a redirect${location ? ` to ${excerpt(location, bearer)}` : ""}, which is not followed`
        : `a body that is not a protocol error: ${excerpt(typeof body === "string" ? body : (JSON.stringify(body) ?? ""), bearer)}`;
  return new RunnerError(mapped, `the control plane at ${url} answered HTTP ${status}, ${said}`, {
    hint: hints[mapped],
  });
}

/**
 * A piece of text from the network, fit for an error message: the bearer and anything shaped
 * like a secret redacted (a server may echo what it was sent), control characters flattened,
 * and capped.
 */
function excerpt(text: string, bearer: string): string {
  // An empty bearer would split between every character.
  const flat = (bearer === "" ? text : text.split(bearer).join("[redacted]"))
    .replace(/\b(?:rgt|rnc|adm)_[A-Za-z0-9_-]{8,}/g, "[redacted]")
    .replace(/\p{Cc}+/gu, " ")
    .trim();
  if (flat === "") return "(empty)";
  if (flat.length <= BODY_EXCERPT_CHARS) return JSON.stringify(flat);
  return `${JSON.stringify(flat.slice(0, BODY_EXCERPT_CHARS))}… (${flat.length - BODY_EXCERPT_CHARS} more characters)`;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function causeText(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (error as Error).message;
}

export async function unregister(options: ApiOptions, credential: string, body: UnregisterRequest): Promise<void> {
  await call(options, "/runners/unregister", credential, body, unregisterResponseSchema);
}
