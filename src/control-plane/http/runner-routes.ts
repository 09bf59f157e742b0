// Handlers of the runner API (register, verify, repair, unregister, and a plain request on
// the channel's path), of health, and of the admin endpoints about runners and registration tokens. `authenticateRunner` is also what
// the channel's upgrade runs, so the WebSocket and HTTP refuse a runner for the same reasons.
import { CHANNEL_PATH } from "../../protocol/channel.js";
import {
  API_PREFIX,
  createRegistrationTokenRequestSchema,
  createRegistrationTokenResponseSchema,
  healthResponseSchema,
  listRunnersResponseSchema,
  pauseRunnerRequestSchema,
  registerRequestSchema,
  registerResponseSchema,
  repairRequestSchema,
  repairResponseSchema,
  runnerIdSchema,
  setRunnerLabelsRequestSchema,
  unregisterRequestSchema,
  unregisterResponseSchema,
  verifyRequestSchema,
  verifyResponseSchema,
  type RunnerView,
} from "../../protocol/http.js";
import { compareVersions } from "../../protocol/version.js";
import { SUPPORTED_PROTOCOL_VERSIONS, type Context, type RouteContext } from "../context.js";
import { HttpError, parseBody, registrationTokenInvalid, reply, type Reply, type RouteRequest } from "./router.js";
import type { RunnerRecord } from "../store/contract.js";
import { CURSOR_KEYS, LIST_PAGE, parsePage, takePage } from "./pagination.js";
import { generateRunnerId, generateToken, generateTokenId, hashSecret, secretMatchesHash } from "../tokens.js";

/** The admin answers about one runner (revoke, pause, resume, labels) have verify's shape: `{ ok: true, runner }`. */
const runnerResponseSchema = verifyResponseSchema;

export function getHealth(_request: RouteRequest, context: RouteContext): Reply {
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

export async function registerRunner(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const body = parseBody(registerRequestSchema, request.body);
  requireSupportedVersions(context, body);
  const credential = generateToken("credential");
  const result = await context.store.registerRunner({
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
      // Checked before the body too (router.ts); used or expired meanwhile, it is refused here.
      throw registrationTokenInvalid();
    case "name_taken":
      throw new HttpError(
        409,
        "name_taken",
        `a runner named "${body.name}" is already registered; register with replace=true to replace it`,
      );
    case "registered": {
      const { runner, replaced } = result;
      context.logger.info(
        { runnerId: runner.id, name: runner.name, replaced: replaced?.id ?? null },
        "runner registered",
      );
      // The replaced runner is deleted: its open channel must not get another job (nor its env).
      if (replaced) context.channel.disconnectRunner(replaced.id, "replaced");
      return reply(registerResponseSchema, 201, {
        runnerId: runner.id,
        credential,
        name: runner.name,
        labels: runner.labels,
      });
    }
  }
}

/**
 * The checks verify, repair, unregister and the channel's upgrade share, in the protocol's
 * order: versions (426), the runner (404), its credential (401), revocation (401).
 */
export async function authenticateRunner(
  context: Context,
  bearer: string,
  sent: { protocolVersion: number; agentVersion: string; runnerId: string },
): Promise<RunnerRecord> {
  requireSupportedVersions(context, sent);
  const runner = await context.store.findRunner(sent.runnerId);
  if (!runner) throw runnerNotFound(sent.runnerId);
  if (!secretMatchesHash(bearer, runner.credentialHash)) {
    throw new HttpError(401, "unauthorized", "the credential is not valid for this runner");
  }
  if (runner.revokedAt !== null) {
    throw new HttpError(
      401,
      "credential_revoked",
      `the credential of runner ${runner.id} was revoked by an admin; register again`,
    );
  }
  return runner;
}

export async function verifyRunner(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const body = parseBody(verifyRequestSchema, request.body);
  const runner = await authenticateRunner(context, request.bearer, body);
  if (runner.host.fingerprint !== body.host.fingerprint) {
    throw new HttpError(
      409,
      "host_fingerprint_mismatch",
      `the credential of runner ${runner.id} is bound to another host (${runner.host.hostname}); ` +
        `if this machine is that runner, call POST ${API_PREFIX}/runners/repair (runner repair) to re-bind it`,
    );
  }
  const seen = await context.store.touchRunner(runner.id, context.now());
  if (!seen) throw runnerNotFound(runner.id);
  return reply(verifyResponseSchema, 200, { ok: true, runner: toRunnerView(seen) });
}

export async function repairRunner(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const body = parseBody(repairRequestSchema, request.body);
  const runner = await authenticateRunner(context, request.bearer, body);
  const rebound = await context.store.rebindRunnerHost(runner.id, body.host, context.now());
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
export async function unregisterRunner(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const body = parseBody(unregisterRequestSchema, request.body);
  const runner = await authenticateRunner(context, request.bearer, body);
  if (!(await context.store.deleteRunner(runner.id))) throw runnerNotFound(runner.id);
  context.logger.info({ runnerId: runner.id, name: runner.name }, "runner unregistered itself");
  context.channel.disconnectRunner(runner.id, "deleted");
  return reply(unregisterResponseSchema, 200, { ok: true });
}

/**
 * A plain HTTP request (no `Upgrade: websocket`) on the channel path: 400 with the protocol's
 * error body, as RFC 6455 §4.2.1 asks of a server given a request that is not a handshake.
 * (The channel itself is served on the HTTP server's `upgrade` event: channel/endpoint.ts.)
 */
export function refusePlainChannelRequest(): never {
  throw new HttpError(
    400,
    "bad_request",
    `${CHANNEL_PATH} is the runner channel: a WebSocket endpoint (send GET with Upgrade: websocket, RFC 6455)`,
  );
}

export async function createRegistrationToken(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const body = parseBody(createRegistrationTokenRequestSchema, request.body);
  const token = generateToken("registration");
  const createdAt = context.now();
  const expiresAt = new Date(createdAt.getTime() + body.expiresInSeconds * 1000);
  const tokenId = generateTokenId();
  await context.store.insertRegistrationToken({ id: tokenId, tokenHash: hashSecret(token), createdAt, expiresAt });
  context.logger.info({ tokenId, expiresAt: expiresAt.toISOString() }, "registration token created");
  return reply(createRegistrationTokenResponseSchema, 201, { token, tokenId, expiresAt: expiresAt.toISOString() });
}

export async function listRunners(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const page = parsePage(request.query, LIST_PAGE, CURSOR_KEYS.runner);
  const rows = await context.store.listRunners({ afterName: page.after, limit: page.limit + 1 });
  const { items, nextCursor } = takePage(rows, page.limit, (runner) => runner.name);
  return reply(listRunnersResponseSchema, 200, { runners: items.map(toRunnerView), nextCursor });
}

export async function revokeRunner(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const id = parseRunnerId(request.params);
  const runner = await context.store.revokeRunner(id, context.now());
  if (!runner) throw runnerNotFound(id);
  context.logger.info({ runnerId: id }, "runner credential revoked");
  context.channel.disconnectRunner(id, "revoked");
  return reply(runnerResponseSchema, 200, { ok: true, runner: toRunnerView(runner) });
}

/** No new jobs for this runner until it is resumed; what it runs goes on. Pausing again updates the reason. */
export async function pauseRunner(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const id = parseRunnerId(request.params);
  const reason = parseBody(pauseRunnerRequestSchema, request.body).reason ?? "paused by an admin";
  const runner = await context.store.setRunnerPaused(id, { reason, at: context.now() });
  if (!runner) throw runnerNotFound(id);
  context.logger.info({ runnerId: id, reason }, "runner paused");
  context.queue.setPaused(id, { reason });
  return reply(runnerResponseSchema, 200, { ok: true, runner: toRunnerView(runner) });
}

/** Jobs go to this runner again; resuming a runner that is not paused changes nothing. */
export async function resumeRunner(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const id = parseRunnerId(request.params);
  const runner = await context.store.setRunnerPaused(id, null);
  if (!runner) throw runnerNotFound(id);
  context.logger.info({ runnerId: id }, "runner resumed");
  context.queue.setPaused(id, null);
  return reply(runnerResponseSchema, 200, { ok: true, runner: toRunnerView(runner) });
}

/** Replaces the labels that gate jobs; a connected runner is matched with them at once. */
export async function setRunnerLabels(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const id = parseRunnerId(request.params);
  const { labels } = parseBody(setRunnerLabelsRequestSchema, request.body);
  const runner = await context.store.setRunnerLabels(id, labels);
  if (!runner) throw runnerNotFound(id);
  context.logger.info({ runnerId: id, labels }, "runner labels set by an admin");
  context.queue.setLabels(id, runner.labels);
  return reply(runnerResponseSchema, 200, { ok: true, runner: toRunnerView(runner) });
}

export async function deleteRunner(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const id = parseRunnerId(request.params);
  if (!(await context.store.deleteRunner(id))) throw runnerNotFound(id);
  context.logger.info({ runnerId: id }, "runner deleted");
  context.channel.disconnectRunner(id, "deleted");
  return { status: 204 };
}

function parseRunnerId(params: Record<string, string>): string {
  const result = runnerIdSchema.safeParse(params.id);
  if (!result.success) throw new HttpError(400, "bad_request", `id: ${result.error.issues[0]?.message ?? "invalid"}`);
  return result.data;
}

function runnerNotFound(id: string): HttpError {
  return new HttpError(
    404,
    "runner_not_found",
    `runner ${id} does not exist (it may have been deleted); register again`,
  );
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
    paused: runner.pausedAt !== null,
    pauseReason: runner.pauseReason,
  };
}
