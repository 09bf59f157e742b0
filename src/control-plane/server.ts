// The reference control plane's HTTP API (protocol v1) on plain node:http. One route table
// maps method + path to an auth rule and a handler; the driver around it reads and limits
// bodies, authenticates, turns errors into the protocol's error body and logs each request.
// The WebSocket channel attaches later to the same `httpServer` through its `upgrade` event.
import http from "node:http";
import { chmodSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import type { z } from "zod";
import {
  API_PREFIX,
  createRegistrationTokenRequestSchema,
  createRegistrationTokenResponseSchema,
  healthResponseSchema,
  listRunnersResponseSchema,
  registerRequestSchema,
  registerResponseSchema,
  repairRequestSchema,
  repairResponseSchema,
  runnerIdSchema,
  unregisterRequestSchema,
  unregisterResponseSchema,
  verifyRequestSchema,
  verifyResponseSchema,
  type ApiErrorCode,
  type ErrorBody,
  type RunnerView,
} from "../protocol/http.js";
import { PROTOCOL_VERSION, compareVersions } from "../protocol/version.js";
import { RunnerError } from "../errors.js";
import { createLogger, type Logger } from "../log/logger.js";
import { ControlPlaneStore, type RunnerRecord } from "./store.js";
import { generateRunnerId, generateToken, generateTokenId, hashSecret, secretMatchesHash } from "./tokens.js";

export const MAX_BODY_BYTES = 64 * 1024;
export const SUPPORTED_PROTOCOL_VERSIONS: readonly number[] = [PROTOCOL_VERSION];
export const DATABASE_FILE = "control-plane.sqlite";
const ADMIN_TOKEN_HASH_SETTING = "admin_token_hash";
/** In-flight requests get this long to finish on close before their sockets are cut. */
const CLOSE_GRACE_MS = 2000;
/** The admin revoke answer has the same shape as verify's: `{ ok: true, runner }`. */
const revokeRunnerResponseSchema = verifyResponseSchema;

export interface ControlPlaneOptions {
  host?: string;
  /** 0 (the default) picks a free port. */
  port?: number;
  /** Directory for `control-plane.sqlite` (created 0700); in memory when absent. */
  dataDir?: string;
  /** Use this admin token (its hash replaces any stored one) instead of a stored or new one. */
  adminToken?: string;
  logger?: Logger;
  /** Agents older than this get 426 upgrade_required. */
  minAgentVersion?: string;
  /** The clock; tests pass their own to move time. */
  now?: () => Date;
}

export interface ControlPlane {
  url: string;
  /** The plain admin token when given or newly generated; null when only its stored hash is known. */
  adminToken: string | null;
  httpServer: http.Server;
  store: ControlPlaneStore;
  close(): Promise<void>;
}

export async function startControlPlane(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const logger = options.logger ?? createLogger({ name: "control-plane" });
  const store = openStore(options.dataDir);
  try {
    const adminToken = setUpAdminToken(store, options.adminToken);
    const context: Context = {
      store,
      logger,
      now: options.now ?? (() => new Date()),
      minAgentVersion: options.minAgentVersion ?? "0.0.0",
    };
    const httpServer = http.createServer((req, res) => void handleRequest(context, req, res));
    const address = await listen(httpServer, options.host ?? "127.0.0.1", options.port ?? 0);
    const url = `http://${address.family === "IPv6" ? `[${address.address}]` : address.address}:${address.port}`;
    logger.info({ url, persistent: options.dataDir !== undefined }, "control plane listening");
    return { url, adminToken, httpServer, store, close: createCloser(httpServer, store) };
  } catch (error) {
    store.close();
    throw error;
  }
}

function openStore(dataDir: string | undefined): ControlPlaneStore {
  if (dataDir === undefined) return new ControlPlaneStore(":memory:");
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const file = join(dataDir, DATABASE_FILE);
  const store = new ControlPlaneStore(file);
  // Only hashes are stored, but a runner list is still nobody else's business.
  chmodSync(file, 0o600);
  return store;
}

function setUpAdminToken(store: ControlPlaneStore, given: string | undefined): string | null {
  if (given !== undefined) {
    if (given.trim().length < 16) {
      throw new RunnerError("usage", "the admin token is too short (at least 16 characters)");
    }
    store.setSetting(ADMIN_TOKEN_HASH_SETTING, hashSecret(given.trim()));
    return given.trim();
  }
  if (store.getSetting(ADMIN_TOKEN_HASH_SETTING) !== undefined) return null;
  const generated = generateToken("admin");
  store.setSetting(ADMIN_TOKEN_HASH_SETTING, hashSecret(generated));
  return generated;
}

function listen(server: http.Server, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const fail = (error: Error) =>
      reject(new RunnerError("usage", `cannot listen on ${host}:${port}: ${error.message}`, { cause: error }));
    server.once("error", fail);
    server.listen(port, host, () => {
      server.off("error", fail);
      resolve(server.address() as AddressInfo);
    });
  });
}

function createCloser(server: http.Server, store: ControlPlaneStore): () => Promise<void> {
  let closing: Promise<void> | undefined;
  return () => {
    closing ??= new Promise<void>((resolve) => {
      const cutOff = setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS);
      server.close(() => {
        clearTimeout(cutOff);
        store.close();
        resolve();
      });
      // Keep-alive sockets without a request would otherwise hold close() open.
      server.closeIdleConnections();
    });
    return closing;
  };
}

// ---- routing ----

interface Context {
  store: ControlPlaneStore;
  logger: Logger;
  now: () => Date;
  minAgentVersion: string;
}

interface RouteRequest {
  params: Record<string, string>;
  /** The bearer token; "" on routes with auth "none". Already checked on "admin" routes. */
  bearer: string;
  /** The parsed JSON body of a POST ({} when empty), otherwise undefined. */
  body: unknown;
}

interface Reply {
  status: number;
  body?: unknown;
}

/** "none": public; "bearer": a token the handler checks itself; "admin": the admin token. */
type Auth = "none" | "bearer" | "admin";

interface Route {
  method: "GET" | "POST" | "DELETE";
  path: string;
  auth: Auth;
  handle: (request: RouteRequest, context: Context) => Reply;
}

const ROUTES: readonly Route[] = [
  { method: "GET", path: "/health", auth: "none", handle: getHealth },
  { method: "POST", path: "/runners/register", auth: "bearer", handle: registerRunner },
  { method: "POST", path: "/runners/verify", auth: "bearer", handle: verifyRunner },
  { method: "POST", path: "/runners/repair", auth: "bearer", handle: repairRunner },
  { method: "POST", path: "/runners/unregister", auth: "bearer", handle: unregisterRunner },
  { method: "POST", path: "/admin/registration-tokens", auth: "admin", handle: createRegistrationToken },
  { method: "GET", path: "/admin/runners", auth: "admin", handle: listRunners },
  { method: "POST", path: "/admin/runners/:id/revoke", auth: "admin", handle: revokeRunner },
  { method: "DELETE", path: "/admin/runners/:id", auth: "admin", handle: deleteRunner },
];

const COMPILED_ROUTES = ROUTES.map((route) => ({ route, pattern: compilePath(route.path) }));

/** "/admin/runners/:id" → /^\/admin\/runners\/(?<id>[^/]+)$/ */
function compilePath(path: string): RegExp {
  const source = path
    .split("/")
    .map((part) => (part.startsWith(":") ? `(?<${part.slice(1)}>[^/]+)` : part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")))
    .join("/");
  return new RegExp(`^${source}$`);
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: ApiErrorCode,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

function matchRoute(method: string, path: string): { route: Route; params: Record<string, string> } {
  const allowed: string[] = [];
  for (const { route, pattern } of COMPILED_ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    if (route.method === method) return { route, params: decodeParams(match.groups ?? {}) };
    allowed.push(route.method);
  }
  if (allowed.length === 0) throw new HttpError(404, "not_found", `no such endpoint: ${API_PREFIX}${path}`);
  // The protocol has no code of its own for 405; not_found says "no such endpoint for this method".
  throw new HttpError(405, "not_found", `${method} is not allowed on ${API_PREFIX}${path} (allowed: ${allowed.join(", ")})`, {
    allow: allowed.join(", "),
  });
}

function decodeParams(raw: Record<string, string>): Record<string, string> {
  try {
    return Object.fromEntries(Object.entries(raw).map(([key, value]) => [key, decodeURIComponent(value)]));
  } catch {
    throw new HttpError(400, "bad_request", "the path has an invalid percent-encoding");
  }
}

async function handleRequest(context: Context, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const started = performance.now();
  // Only the path is logged: never headers (Authorization) or bodies.
  const path = new URL(req.url ?? "/", "http://localhost").pathname;
  res.once("close", () => {
    const ms = Math.round((performance.now() - started) * 10) / 10;
    context.logger.debug({ method: req.method, path, status: res.statusCode, ms }, "request");
  });
  try {
    sendReply(res, await dispatch(context, req, path));
  } catch (error) {
    sendError(context, res, error);
  }
}

async function dispatch(context: Context, req: http.IncomingMessage, fullPath: string): Promise<Reply> {
  if (!fullPath.startsWith(API_PREFIX + "/")) throw new HttpError(404, "not_found", `no such endpoint: ${fullPath}`);
  const { route, params } = matchRoute(req.method ?? "GET", fullPath.slice(API_PREFIX.length));
  const bearer = authenticate(context, route.auth, req.headers.authorization);
  const body = route.method === "POST" ? await readJsonBody(req) : undefined;
  return route.handle({ params, bearer, body }, context);
}

function authenticate(context: Context, auth: Auth, header: string | undefined): string {
  if (auth === "none") return "";
  const bearer = /^Bearer\s+(\S+)\s*$/i.exec(header ?? "")?.[1];
  if (bearer === undefined) {
    throw new HttpError(401, "unauthorized", "missing or malformed header: Authorization: Bearer <token>");
  }
  if (auth === "admin") {
    const storedHash = context.store.getSetting(ADMIN_TOKEN_HASH_SETTING);
    if (storedHash === undefined || !secretMatchesHash(bearer, storedHash)) {
      throw new HttpError(401, "unauthorized", "the admin token is not valid");
    }
  }
  return bearer;
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
function parseBody<S extends z.ZodTypeAny>(schema: S, body: unknown): z.output<S> {
  const result = schema.safeParse(body);
  if (result.success) return result.data as z.output<S>;
  const issues = result.error.issues.map((issue) => `${issue.path.join(".") || "body"}: ${issue.message}`);
  throw new HttpError(400, "bad_request", issues.join("; "));
}

/** Checks an outgoing body against its schema too: a bug becomes a 500, never a wrong shape. */
function reply<S extends z.ZodTypeAny>(schema: S, status: number, body: z.input<S>): Reply {
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

function sendError(context: Context, res: http.ServerResponse, error: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  let body: ErrorBody;
  let status: number;
  if (error instanceof HttpError) {
    status = error.status;
    body = { error: { code: error.code, message: error.message } };
    for (const [name, value] of Object.entries(error.headers)) res.setHeader(name, value);
  } else {
    context.logger.error({ err: error }, "request failed");
    status = 500;
    body = { error: { code: "internal", message: "internal error; see the control plane's log" } };
  }
  sendReply(res, { status, body });
}

// ---- handlers ----

function getHealth(_request: RouteRequest, context: Context): Reply {
  return reply(healthResponseSchema, 200, {
    ok: true,
    protocolVersions: [...SUPPORTED_PROTOCOL_VERSIONS],
    minAgentVersion: context.minAgentVersion,
  });
}

function requireSupportedVersions(context: Context, sent: { protocolVersion: number; agentVersion: string }): void {
  if (!SUPPORTED_PROTOCOL_VERSIONS.includes(sent.protocolVersion)) {
    throw new HttpError(
      426,
      "upgrade_required",
      `protocol version ${sent.protocolVersion} is not supported; this control plane speaks ${SUPPORTED_PROTOCOL_VERSIONS.join(", ")}`,
    );
  }
  if (compareVersions(sent.agentVersion, context.minAgentVersion) < 0) {
    throw new HttpError(
      426,
      "upgrade_required",
      `agent version ${sent.agentVersion} is older than ${context.minAgentVersion}, the oldest this control plane accepts; upgrade runner`,
    );
  }
}

function registerRunner(request: RouteRequest, context: Context): Reply {
  const body = parseBody(registerRequestSchema, request.body);
  requireSupportedVersions(context, body);
  const credential = generateToken("credential");
  const result = context.store.registerRunner({
    tokenHash: hashSecret(request.bearer),
    replace: body.replace,
    now: context.now(),
    runner: {
      id: generateRunnerId(),
      name: body.name,
      labels: body.labels,
      host: body.host,
      credentialHash: hashSecret(credential),
    },
  });
  switch (result.outcome) {
    case "token_invalid":
      throw new HttpError(
        401,
        "registration_token_invalid",
        "the registration token is unknown, already used or expired; ask an admin for a new one",
      );
    case "name_taken":
      throw new HttpError(
        409,
        "name_taken",
        `a runner named "${body.name}" is already registered; register with replace=true to replace it`,
      );
    case "registered": {
      const { runner, replaced } = result;
      context.logger.info({ runnerId: runner.id, name: runner.name, replaced: replaced?.id ?? null }, "runner registered");
      return reply(registerResponseSchema, 201, { runnerId: runner.id, credential, name: runner.name, labels: runner.labels });
    }
  }
}

/** The checks verify and repair share: versions, then the runner, its credential, revocation. */
function authenticateRunner(context: Context, bearer: string, body: { protocolVersion: number; agentVersion: string; runnerId: string }): RunnerRecord {
  requireSupportedVersions(context, body);
  const runner = context.store.findRunner(body.runnerId);
  if (!runner) throw runnerNotFound(body.runnerId);
  if (!secretMatchesHash(bearer, runner.credentialHash)) {
    throw new HttpError(401, "unauthorized", "the credential is not valid for this runner");
  }
  if (runner.revokedAt !== null) {
    throw new HttpError(401, "credential_revoked", `the credential of runner ${runner.id} was revoked by an admin; register again`);
  }
  return runner;
}

function verifyRunner(request: RouteRequest, context: Context): Reply {
  const body = parseBody(verifyRequestSchema, request.body);
  const runner = authenticateRunner(context, request.bearer, body);
  if (runner.host.fingerprint !== body.host.fingerprint) {
    throw new HttpError(
      409,
      "host_fingerprint_mismatch",
      `the credential of runner ${runner.id} is bound to another host (${runner.host.hostname}); ` +
        `if this machine is that runner, call POST ${API_PREFIX}/runners/repair (runner repair) to re-bind it`,
    );
  }
  const seen = context.store.touchRunner(runner.id, context.now());
  if (!seen) throw runnerNotFound(runner.id);
  return reply(verifyResponseSchema, 200, { ok: true, runner: toRunnerView(seen) });
}

function repairRunner(request: RouteRequest, context: Context): Reply {
  const body = parseBody(repairRequestSchema, request.body);
  const runner = authenticateRunner(context, request.bearer, body);
  const rebound = context.store.rebindRunnerHost(runner.id, body.host, context.now());
  if (!rebound) throw runnerNotFound(runner.id);
  const previousFingerprint = runner.host.fingerprint;
  if (previousFingerprint !== body.host.fingerprint) {
    context.logger.info(
      { runnerId: runner.id, previousFingerprint, fingerprint: body.host.fingerprint },
      "runner re-bound to a new host",
    );
  }
  return reply(repairResponseSchema, 200, { ok: true, runner: toRunnerView(rebound), previousFingerprint });
}

/** The runner removes itself; the host does not matter, so there is no fingerprint check. */
function unregisterRunner(request: RouteRequest, context: Context): Reply {
  const body = parseBody(unregisterRequestSchema, request.body);
  const runner = authenticateRunner(context, request.bearer, body);
  if (!context.store.deleteRunner(runner.id)) throw runnerNotFound(runner.id);
  context.logger.info({ runnerId: runner.id, name: runner.name }, "runner unregistered itself");
  return reply(unregisterResponseSchema, 200, { ok: true });
}

function createRegistrationToken(request: RouteRequest, context: Context): Reply {
  const body = parseBody(createRegistrationTokenRequestSchema, request.body);
  const token = generateToken("registration");
  const createdAt = context.now();
  const expiresAt = new Date(createdAt.getTime() + body.expiresInSeconds * 1000);
  const tokenId = generateTokenId();
  context.store.insertRegistrationToken({ id: tokenId, tokenHash: hashSecret(token), createdAt, expiresAt });
  context.logger.info({ tokenId, expiresAt: expiresAt.toISOString() }, "registration token created");
  return reply(createRegistrationTokenResponseSchema, 201, { token, tokenId, expiresAt: expiresAt.toISOString() });
}

function listRunners(_request: RouteRequest, context: Context): Reply {
  return reply(listRunnersResponseSchema, 200, { runners: context.store.listRunners().map(toRunnerView) });
}

function revokeRunner(request: RouteRequest, context: Context): Reply {
  const id = parseRunnerId(request.params);
  const runner = context.store.revokeRunner(id, context.now());
  if (!runner) throw runnerNotFound(id);
  context.logger.info({ runnerId: id }, "runner credential revoked");
  return reply(revokeRunnerResponseSchema, 200, { ok: true, runner: toRunnerView(runner) });
}

function deleteRunner(request: RouteRequest, context: Context): Reply {
  const id = parseRunnerId(request.params);
  if (!context.store.deleteRunner(id)) throw runnerNotFound(id);
  context.logger.info({ runnerId: id }, "runner deleted");
  return { status: 204 };
}

function parseRunnerId(params: Record<string, string>): string {
  const result = runnerIdSchema.safeParse(params.id);
  if (!result.success) throw new HttpError(400, "bad_request", `id: ${result.error.issues[0]?.message ?? "invalid"}`);
  return result.data;
}

function runnerNotFound(id: string): HttpError {
  return new HttpError(404, "runner_not_found", `runner ${id} does not exist (it may have been deleted); register again`);
}

function toRunnerView(runner: RunnerRecord): RunnerView {
  return {
    runnerId: runner.id,
    name: runner.name,
    labels: runner.labels,
    host: runner.host,
    registeredAt: runner.registeredAt.toISOString(),
    lastSeenAt: runner.lastSeenAt?.toISOString() ?? null,
    revoked: runner.revokedAt !== null,
  };
}
