// The agent's side of the runner HTTP API: register, verify, repair, unregister. Requests go
// through the one HTTP client (http.ts); this file says what each failure means for the
// runner: a RunnerError whose code is revoked, deleted, moved host, upgrade, unreachable...
import type { z } from "zod";
import { RunnerError, type ErrorCode } from "../errors.js";
import {
  registerResponseSchema,
  repairResponseSchema,
  verifyResponseSchema,
  type ApiErrorCode,
  type RegisterRequest,
  type RegisterResponse,
  type RepairRequest,
  type RepairResponse,
  type UnregisterRequest,
  unregisterResponseSchema,
  type VerifyRequest,
  type VerifyResponse,
} from "../protocol/http.js";
import { requestApi, type ErrorAnswer } from "./http.js";
import type { ProxyConfig } from "../net/proxy.js";
import { checkControlPlaneUrl } from "../config/transport.js";

export interface ApiOptions {
  url: string;
  timeoutMs: number;
  proxy: ProxyConfig;
  /** The operator's --insecure-plaintext: plain http:// to a host that is not loopback is refused without it (default). */
  insecurePlaintext?: boolean;
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

export async function unregister(options: ApiOptions, credential: string, body: UnregisterRequest): Promise<void> {
  await call(options, "/runners/unregister", credential, body, unregisterResponseSchema);
}

/** No answer this API gives is near this size; a larger body is not read to the end. */
const MAX_BODY_BYTES = 256 * 1024;

function call<S extends z.ZodTypeAny>(
  options: ApiOptions,
  route: string,
  bearer: string,
  body: unknown,
  schema: S,
): Promise<z.output<S>> {
  // Every request carries a token or a credential: the transport rule is checked here, for
  // every verb, and not only where the URL was first given (a registration.json written
  // by hand, or an opt-in dropped since, must not send the credential in the clear).
  checkControlPlaneUrl(options.url, options.insecurePlaintext === true);
  return requestApi(
    { url: options.url, timeoutMs: options.timeoutMs, maxBodyBytes: MAX_BODY_BYTES, proxy: options.proxy },
    { method: "POST", route, bearer, body, schema },
    (answer) => errorFor(answer, options.url),
  );
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

function errorFor(answer: ErrorAnswer, url: string): RunnerError {
  const { status, apiCode } = answer;
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
  // The wire's own wording ("replace=true") is an API field; a person at the CLI needs the flag.
  const hint =
    apiCode === "name_taken"
      ? "pass --replace to take the name over (the control plane deletes the runner that had it), or choose another --name"
      : hints[mapped];
  return new RunnerError(mapped, `the control plane at ${url} answered HTTP ${status}, ${answer.said}`, { hint });
}
