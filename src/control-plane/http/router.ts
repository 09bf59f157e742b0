// The HTTP driver of the reference control plane, on plain node:http: matches method + path
// against the route table (routes.ts), authenticates by the route's rule, reads and limits
// the body, and turns a handler's reply or error into the protocol's JSON answer. Handlers
// are plain functions of (request, context) → reply; they throw HttpError for protocol errors.
import type http from "node:http";
import type { z } from "zod";
import { API_PREFIX, type ApiErrorCode, type ErrorBody } from "../../protocol/http.js";
import type { Context, RouteContext } from "../context.js";
import { hashSecret, secretMatchesHash } from "../tokens.js";

export const MAX_BODY_BYTES = 64 * 1024;

export interface RouteRequest {
  params: Record<string, string>;
  query: URLSearchParams;
  /** The bearer token; "" on routes with auth "none". Already checked on "admin" routes. */
  bearer: string;
  /** The parsed JSON body of a POST or PUT ({} when empty), otherwise undefined. */
  body: unknown;
}

export interface Reply {
  status: number;
  body?: unknown;
}

/**
 * "none": public; "bearer": a token the handler checks itself (the runner routes: the runner
 * id it is checked against is in the body); "registration": a usable registration token,
 * checked from the header before the body is read (the handler consumes it); "admin": the
 * admin token, also checked before the body.
 */
export type Auth = "none" | "bearer" | "registration" | "admin";

export interface Route {
  /** HEAD is answered like GET without the body (node:http drops a body written to a HEAD answer). */
  method: "GET" | "HEAD" | "POST" | "PUT" | "DELETE";
  /** Relative to API_PREFIX; `:name` segments become params. */
  path: string;
  auth: Auth;
  handle: (request: RouteRequest, context: RouteContext) => Reply | Promise<Reply>;
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: ApiErrorCode,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

type CompiledRoutes = readonly { route: Route; pattern: RegExp }[];

/** Returns the request listener for a route table. */
export function createRequestHandler(
  context: RouteContext,
  routes: readonly Route[],
): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  const compiled = routes.map((route) => ({ route, pattern: compilePath(route.path) }));
  return (req, res) => void handleRequest(context, compiled, req, res);
}

/** "/admin/runners/:id" → /^\/admin\/runners\/(?<id>[^/]+)$/ */
function compilePath(path: string): RegExp {
  const source = path
    .split("/")
    .map((part) => (part.startsWith(":") ? `(?<${part.slice(1)}>[^/]+)` : part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")))
    .join("/");
  return new RegExp(`^${source}$`);
}

function matchRoute(
  routes: CompiledRoutes,
  method: string,
  path: string,
): { route: Route; params: Record<string, string> } {
  const allowed: string[] = [];
  for (const { route, pattern } of routes) {
    const match = pattern.exec(path);
    if (!match) continue;
    if (route.method === method) return { route, params: decodeParams(match.groups ?? {}) };
    allowed.push(route.method);
  }
  if (allowed.length === 0) throw new HttpError(404, "not_found", `no such endpoint: ${API_PREFIX}${path}`);
  // The protocol has no code of its own for 405; not_found says "no such endpoint for this method".
  throw new HttpError(
    405,
    "not_found",
    `${method} is not allowed on ${API_PREFIX}${path} (allowed: ${allowed.join(", ")})`,
    {
      allow: allowed.join(", "),
    },
  );
}

function decodeParams(raw: Record<string, string>): Record<string, string> {
  try {
    return Object.fromEntries(Object.entries(raw).map(([key, value]) => [key, decodeURIComponent(value)]));
  } catch {
    throw new HttpError(400, "bad_request", "the path has an invalid percent-encoding");
  }
}

async function handleRequest(
  context: RouteContext,
  routes: CompiledRoutes,
  req: http.IncomingMessage,
  res: http.ServerResponse,
): Promise<void> {
  const started = performance.now();
  // Only the path is logged: never headers (Authorization), query values or bodies.
  const url = new URL(req.url ?? "/", "http://localhost");
  res.once("close", () => {
    const ms = Math.round((performance.now() - started) * 10) / 10;
    context.logger.debug({ method: req.method, path: url.pathname, status: res.statusCode, ms }, "request");
  });
  try {
    sendReply(res, await dispatch(context, routes, req, url));
  } catch (error) {
    sendError(context, res, error);
  }
}

async function dispatch(
  context: RouteContext,
  routes: CompiledRoutes,
  req: http.IncomingMessage,
  url: URL,
): Promise<Reply> {
  if (!url.pathname.startsWith(API_PREFIX + "/"))
    throw new HttpError(404, "not_found", `no such endpoint: ${url.pathname}`);
  const { route, params } = matchRoute(routes, req.method ?? "GET", url.pathname.slice(API_PREFIX.length));
  const bearer = await authenticate(context, route.auth, req.headers.authorization);
  const body = route.method === "POST" || route.method === "PUT" ? await readJsonBody(req) : undefined;
  return await route.handle({ params, query: url.searchParams, bearer, body }, context);
}

/** The bearer token of an Authorization header, or undefined when missing or malformed. */
export function parseBearer(header: string | undefined): string | undefined {
  return /^Bearer\s+(\S+)\s*$/i.exec(header ?? "")?.[1];
}

/**
 * Runs before a byte of the body is read: a caller without a valid admin or registration
 * token cannot make the server hold a socket open, or buffer, for its body.
 */
async function authenticate(context: Context, auth: Auth, header: string | undefined): Promise<string> {
  if (auth === "none") return "";
  const bearer = parseBearer(header);
  if (bearer === undefined) {
    throw new HttpError(401, "unauthorized", "missing or malformed header: Authorization: Bearer <token>");
  }
  if (auth === "registration" && !(await context.store.registrationTokenUsable(hashSecret(bearer), context.now()))) {
    // Not consumed here: registration consumes it atomically with creating the runner.
    throw registrationTokenInvalid();
  }
  if (auth === "admin") {
    const storedHash = await context.adminTokenHash.read();
    if (storedHash === undefined || !secretMatchesHash(bearer, storedHash)) {
      throw new HttpError(401, "unauthorized", "the admin token is not valid");
    }
  }
  return bearer;
}

export function registrationTokenInvalid(): HttpError {
  return new HttpError(
    401,
    "registration_token_invalid",
    "the registration token is unknown, already used or expired; ask an admin for a new one",
  );
}

/** Reads at most MAX_BODY_BYTES and parses JSON; an empty body is `{}`. */
async function readJsonBody(req: http.IncomingMessage): Promise<unknown> {
  const text = (await readBody(req)).toString("utf8");
  if (text.trim() === "") return {};
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new HttpError(400, "bad_request", `body: not valid JSON (${(error as Error).message})`);
  }
}

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  // The rest of a refused body may still be arriving: the connection is not reused.
  const tooLarge = () =>
    new HttpError(413, "payload_too_large", `body: larger than ${MAX_BODY_BYTES} bytes`, { connection: "close" });
  return new Promise((resolve, reject) => {
    if (Number(req.headers["content-length"] ?? 0) > MAX_BODY_BYTES) {
      req.resume(); // discard the body rather than destroy the socket we answer on
      reject(tooLarge());
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let overflowed = false;
    req.on("data", (chunk: Buffer) => {
      if (overflowed) return; // keep draining, keep nothing
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) {
        chunks.push(chunk);
        return;
      }
      overflowed = true;
      chunks.length = 0;
      reject(tooLarge());
    });
    req.once("end", () => resolve(Buffer.concat(chunks)));
    req.once("error", reject);
  });
}

/** Validates with a protocol schema; failures name each field as "path: message". */
export function parseBody<S extends z.ZodTypeAny>(schema: S, body: unknown): z.output<S> {
  const result = schema.safeParse(body);
  if (result.success) return result.data as z.output<S>;
  const issues = result.error.issues.map((issue) => `${issue.path.join(".") || "body"}: ${issue.message}`);
  throw new HttpError(400, "bad_request", issues.join("; "));
}

/** Checks an outgoing body against its schema too: a bug becomes a 500, never a wrong shape. */
export function reply<S extends z.ZodTypeAny>(schema: S, status: number, body: z.input<S>): Reply {
  return { status, body: schema.parse(body) };
}

function sendReply(res: http.ServerResponse, { status, body }: Reply): void {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const text = JSON.stringify(body);
  res
    .writeHead(status, {
      "content-type": "application/json; charset=utf-8",
      "content-length": Buffer.byteLength(text),
      "cache-control": "no-store",
    })
    .end(text);
}

/** The status and protocol error body for any thrown value (unexpected ones are logged, and become 500). */
export function toErrorAnswer(
  context: Context,
  error: unknown,
): { status: number; body: ErrorBody; headers: Record<string, string> } {
  if (error instanceof HttpError) {
    return {
      status: error.status,
      body: { error: { code: error.code, message: error.message } },
      headers: error.headers,
    };
  }
  context.logger.error({ err: error }, "request failed");
  return {
    status: 500,
    body: { error: { code: "internal", message: "internal error; see the control plane's log" } },
    headers: {},
  };
}

function sendError(context: Context, res: http.ServerResponse, error: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const { status, body, headers } = toErrorAnswer(context, error);
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
  sendReply(res, { status, body });
}
