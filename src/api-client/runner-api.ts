// The agent's side of the runner HTTP API: register, verify, repair. Every answer is checked
// against its schema, and every failure becomes a RunnerError whose code says what it means
// for the runner (revoked, deleted, moved host, upgrade, unreachable...).
import type { z } from "zod";
import { RunnerError, type ErrorCode } from "../errors.js";
import {
  API_PREFIX,
  errorBodySchema,
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

export function register(options: ApiOptions, registrationToken: string, body: RegisterRequest): Promise<RegisterResponse> {
  return call(options, "/runners/register", registrationToken, body, registerResponseSchema);
}

export function verify(options: ApiOptions, credential: string, body: VerifyRequest): Promise<VerifyResponse> {
  return call(options, "/runners/verify", credential, body, verifyResponseSchema);
}

export function repair(options: ApiOptions, credential: string, body: RepairRequest): Promise<RepairResponse> {
  return call(options, "/runners/repair", credential, body, repairResponseSchema);
}

async function call<T>(options: ApiOptions, route: string, bearer: string, body: unknown, schema: z.ZodType<T>): Promise<T> {
  const target = new URL(API_PREFIX + route, options.url);
  let response: Response;
  try {
    response = await fetch(target, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${bearer}` },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(options.timeoutMs),
    });
  } catch (error) {
    const reason = (error as Error).name === "TimeoutError" ? `no answer within ${options.timeoutMs} ms` : causeText(error);
    throw new RunnerError("control_plane_unavailable", `cannot reach the control plane at ${options.url}: ${reason}`, { cause: error });
  }
  const text = await response.text();
  const json = parseJson(text);
  if (response.ok) {
    const parsed = schema.safeParse(json);
    if (parsed.success) return parsed.data;
    throw new RunnerError("control_plane_rejected", `the control plane at ${options.url} sent an answer this runner does not understand (${route})`);
  }
  throw errorFor(response.status, json, options.url);
}

function errorFor(status: number, json: unknown, url: string): RunnerError {
  const body = errorBodySchema.safeParse(json);
  const code = body.success ? body.data.error.code : "unknown";
  const message = body.success ? body.data.error.message : `HTTP ${status}`;
  const said = `the control plane at ${url} answered ${status} ${code}: ${message}`;
  const mapped: ErrorCode =
    status === 426 ? "upgrade_required"
    : status >= 500 ? "control_plane_unavailable"
    : code === "credential_revoked" || (status === 401 && code === "unauthorized") ? "credential_revoked"
    : code === "runner_not_found" ? "runner_deleted"
    : code === "host_fingerprint_mismatch" ? "host_fingerprint_mismatch"
    : "control_plane_rejected";
  return new RunnerError(mapped, said);
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
