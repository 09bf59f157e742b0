// The one HTTP client behind both API clients (the runner's, runner-api.ts; the admin's,
// admin.ts): a fetch-shaped request (node-fetch.ts: the global fetch costs the daemon 15 MB)
// with a deadline that covers the headers and the body, redirects reported rather than
// followed (a bearer token goes only where it was configured to go), a 2xx answer checked
// against its schema, and any other answer read into an ErrorAnswer that each client turns
// into its own typed error. Nothing a server sends reaches a message uncapped
// or with the bearer in it.
import type { z } from "zod";
import { RunnerError } from "../errors.js";
import { API_PREFIX, ERROR_CODES, errorBodySchema, type ApiErrorCode } from "../protocol/http.js";
import { chooseProxy, type ProxyConfig } from "../net/proxy.js";
import { fetchThroughProxy, type FetchAnswer, type FetchLike } from "../net/proxy-agents.js";
import { directFetch } from "./node-fetch.js";

export interface ApiEndpoint {
  /** The control plane's URL as configured; a path after the host is kept (a control plane behind a prefix). */
  url: string;
  /** How long one request may take, from connecting to the last byte of the body. */
  timeoutMs: number;
  /** A larger body is not read to the end; absent: read it all. */
  maxBodyBytes?: number;
  /** Which proxy, if any, carries the request (net/proxy.ts decides per request URL). */
  proxy: ProxyConfig;
}

export interface ApiRequest<S extends z.ZodTypeAny> {
  method: "GET" | "POST" | "PUT" | "DELETE";
  /** Under API_PREFIX, e.g. "/runners/verify". */
  route: string;
  bearer: string;
  /** Sent as JSON when present. */
  body?: unknown;
  /** What a 2xx answer must be. */
  schema: S;
}

/** A non-2xx answer, as far as it could be read; the client decides what it means. */
export interface ErrorAnswer {
  status: number;
  /** The protocol's error body when the answer is one (its code may be one the protocol does not define). */
  error: { code: string; message: string } | undefined;
  /** `error.code` when it is one of the protocol's codes, else null. */
  apiCode: ApiErrorCode | null;
  /** What came back, fit for an error message: the protocol error, a redirect, or an excerpt of the body. */
  said: string;
}

/** How much of a body a person sees in an error message. */
const BODY_EXCERPT_CHARS = 200;

/**
 * Sends one request; returns the 2xx answer parsed by `request.schema`. Throws RunnerError
 * `control_plane_unavailable` when there is no (complete) answer in time,
 * `control_plane_rejected` when a 2xx answer does not fit the schema, and what `toError`
 * makes of any other status.
 */
export async function requestApi<S extends z.ZodTypeAny>(
  endpoint: ApiEndpoint,
  request: ApiRequest<S>,
  toError: (answer: ErrorAnswer) => RunnerError,
): Promise<z.output<S>> {
  const target = apiUrl(endpoint.url, request.route);
  // A bad proxy URL throws config_invalid here, before anything is sent.
  const proxy = chooseProxy(target, endpoint.proxy);
  if (proxy === null) return exchange(directFetch, target, "", endpoint, request, toError);
  const through = await fetchThroughProxy(proxy);
  try {
    return await exchange(
      through.fetch,
      target,
      ` through the proxy ${proxy.redacted} (${proxy.from})`,
      endpoint,
      request,
      toError,
    );
  } finally {
    through.close();
  }
}

/** One request and its answer; `via` names the proxy in errors (empty when there is none). */
async function exchange<S extends z.ZodTypeAny>(
  send: FetchLike,
  target: URL,
  via: string,
  endpoint: ApiEndpoint,
  request: ApiRequest<S>,
  toError: (answer: ErrorAnswer) => RunnerError,
): Promise<z.output<S>> {
  const { url, timeoutMs } = endpoint;
  const unreachable = (reason: string, cause: unknown) =>
    new RunnerError("control_plane_unavailable", `cannot reach the control plane at ${url}${via}: ${reason}`, {
      cause,
    });
  const timedOut = (error: unknown) => (error as Error).name === "TimeoutError";
  let response: FetchAnswer;
  try {
    response = await send(target, {
      method: request.method,
      headers: {
        authorization: `Bearer ${request.bearer}`,
        ...(request.body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: request.body === undefined ? undefined : JSON.stringify(request.body),
      // A redirect is reported, not followed: the bearer token must go only where configured.
      redirect: "manual",
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (error) {
    throw unreachable(timedOut(error) ? `no answer within ${timeoutMs} ms` : causeText(error), error);
  }
  let text: string;
  try {
    text = await readCapped(response, endpoint.maxBodyBytes);
  } catch (error) {
    // The timeout covers the body too: a server that sends headers and then stalls.
    throw unreachable(timedOut(error) ? `no complete answer within ${timeoutMs} ms` : causeText(error), error);
  }
  const json = parseJson(text);
  if (response.ok) {
    const parsed = request.schema.safeParse(json);
    if (parsed.success) return parsed.data as z.output<S>;
    throw new RunnerError(
      "control_plane_rejected",
      `the control plane at ${url} sent an answer this runner does not understand (${request.route}, HTTP ${response.status}: ${excerpt(text, request.bearer)})`,
      { hint: "check that --url names a runner control plane" },
    );
  }
  throw toError(readErrorAnswer(response, json === undefined ? text : json, request.bearer));
}

/**
 * The base URL's path is kept, as the channel's URL keeps it: `https://host/cp` and
 * `/runners/verify?x` → `https://host/cp/api/v1/runners/verify?x`.
 */
function apiUrl(base: string, route: string): URL {
  const root = new URL(base);
  root.pathname = root.pathname.replace(/\/*$/, "/");
  return new URL(`.${API_PREFIX}${route}`, root);
}

function readErrorAnswer(response: FetchAnswer, body: unknown, bearer: string): ErrorAnswer {
  const status = response.status;
  const known = errorBodySchema.safeParse(body);
  const error = known.success ? known.data.error : undefined;
  const apiCode = error === undefined ? null : (ERROR_CODES.find((code) => code === error.code) ?? null);
  const location = response.headers.get("location");
  const said =
    apiCode !== null && error !== undefined
      ? `${apiCode}: ${excerpt(error.message, bearer)}`
      : status >= 300 && status < 400
        ? `a redirect${location ? ` to ${excerpt(location, bearer)}` : ""}, which is not followed`
        : `a body that is not a protocol error: ${excerpt(typeof body === "string" ? body : (JSON.stringify(body) ?? ""), bearer)}`;
  return { status, error, apiCode, said };
}

/** The body as text, at most `maxBytes` of it (a hostile or broken server can send any amount). */
async function readCapped(response: FetchAnswer, maxBytes = Number.POSITIVE_INFINITY): Promise<string> {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.byteLength;
    if (size >= maxBytes) {
      await reader.cancel();
      break;
    }
  }
  return Buffer.concat(chunks).subarray(0, maxBytes).toString("utf8");
}

/**
 * A piece of text from the network, fit for an error message: the bearer and anything shaped
 * like a secret redacted (a server may echo what it was sent), control characters flattened,
 * and capped.
 */
export function excerpt(text: string, bearer: string): string {
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

/**
 * fetch hides the useful part in its chain of causes (a proxy's refusal is two deep): the
 * deepest one's system error code ("ECONNREFUSED"), else its message (undici's codes, such as
 * UND_ERR_ABORTED, say less than their messages).
 */
function causeText(error: unknown): string {
  let deepest = error as { cause?: unknown; code?: unknown; message?: unknown };
  for (let depth = 0; depth < 5 && typeof deepest.cause === "object" && deepest.cause !== null; depth++)
    deepest = deepest.cause as typeof deepest;
  if (typeof deepest.code === "string" && /^E[A-Z0-9_]+$/.test(deepest.code)) return deepest.code;
  return typeof deepest.message === "string" ? deepest.message : String(deepest.code);
}
