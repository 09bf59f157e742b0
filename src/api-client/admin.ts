// A small typed client for the admin API, used by the tests, the benchmarks and the demo.
// Requests go through the one HTTP client (http.ts), with a timeout; answers are validated
// with the protocol schemas; errors say status, code and message but never carry the admin
// token.
import { z } from "zod";
import {
  cancelJobResponseSchema,
  createRegistrationTokenResponseSchema,
  getJobResponseSchema,
  listDevicesResponseSchema,
  listJobLogsResponseSchema,
  listJobsResponseSchema,
  listRunnersResponseSchema,
  submitJobResponseSchema,
  verifyResponseSchema,
  type CreateRegistrationTokenResponse,
  type DeviceView,
  type JobLogChunk,
  type JobStatus,
  type JobView,
  type RunnerView,
  type SubmitJobRequest,
} from "../protocol/http.js";
import { RunnerError } from "../errors.js";
import { requestApi, type ApiEndpoint, type ErrorAnswer } from "./http.js";
import { NO_PROXY, type ProxyConfig } from "../net/proxy.js";

/** How long one admin request may take unless the caller says otherwise. */
export const ADMIN_REQUEST_TIMEOUT_MS = 10_000;

/** DELETE answers 204: there is no body to check. */
const noContentSchema = z.unknown();

/**
 * A non-2xx answer from the admin API. Its code is coarser than the runner API's mapping
 * (runner-api.ts) on purpose: an admin's 401 says nothing about a runner's credential.
 */
export class AdminRequestError extends RunnerError {
  constructor(
    readonly status: number,
    /** The protocol's error code, e.g. "unauthorized" or "runner_not_found". */
    readonly apiCode: string,
    message: string,
  ) {
    super(status >= 500 ? "control_plane_unavailable" : "control_plane_rejected", message);
  }
}

export class AdminClient {
  private readonly endpoint: ApiEndpoint;

  constructor(
    url: string,
    private readonly adminToken: string,
    options: { timeoutMs?: number; proxy?: ProxyConfig } = {},
  ) {
    // No cap on the body: listings grow with the fleet, and the caller is the operator's own tool.
    // Direct unless a proxy is given: the caller (a tool, a test) decides, not the environment.
    this.endpoint = { url, timeoutMs: options.timeoutMs ?? ADMIN_REQUEST_TIMEOUT_MS, proxy: options.proxy ?? NO_PROXY };
  }

  /** Creates a one-time registration token (default lifetime: the server's, one hour). */
  async createRegistrationToken(expiresInSeconds?: number): Promise<CreateRegistrationTokenResponse> {
    const body = expiresInSeconds === undefined ? {} : { expiresInSeconds };
    return this.request("POST", "/admin/registration-tokens", createRegistrationTokenResponseSchema, body);
  }

  /** Every runner, by name (all pages). */
  async listRunners(): Promise<RunnerView[]> {
    return this.walk("/admin/runners", new URLSearchParams(), listRunnersResponseSchema, (page) => page.runners);
  }

  /** Revokes the runner's credential; returns the runner as it is now. */
  async revokeRunner(id: string): Promise<RunnerView> {
    // The answers about one runner, `{ ok: true, runner }`, have the shape of verify's.
    const answer = await this.request(
      "POST",
      `/admin/runners/${encodeURIComponent(id)}/revoke`,
      verifyResponseSchema,
      {},
    );
    return answer.runner;
  }

  /** Pauses the runner (no new jobs; running ones go on); returns the runner as it is now. */
  async pauseRunner(id: string, reason?: string): Promise<RunnerView> {
    const body = reason === undefined ? {} : { reason };
    return (await this.request("POST", `/admin/runners/${encodeURIComponent(id)}/pause`, verifyResponseSchema, body))
      .runner;
  }

  /** Lets a paused runner take jobs again; returns the runner as it is now. */
  async resumeRunner(id: string): Promise<RunnerView> {
    return (await this.request("POST", `/admin/runners/${encodeURIComponent(id)}/resume`, verifyResponseSchema, {}))
      .runner;
  }

  /** Replaces the runner's registered labels, the ones jobs' requiredLabels are matched with. */
  async setRunnerLabels(id: string, labels: string[]): Promise<RunnerView> {
    return (
      await this.request("PUT", `/admin/runners/${encodeURIComponent(id)}/labels`, verifyResponseSchema, { labels })
    ).runner;
  }

  async deleteRunner(id: string): Promise<void> {
    await this.request("DELETE", `/admin/runners/${encodeURIComponent(id)}`, noContentSchema);
  }

  /** Queues a job; the answer shows it as it is right after dispatch (often already assigned). */
  async submitJob(request: SubmitJobRequest): Promise<{ job: JobView }> {
    return this.request("POST", "/admin/jobs", submitJobResponseSchema, request);
  }

  /** The job with all its log chunks (every page), ordered by attempt then seq. */
  async getJob(id: string): Promise<{ job: JobView; logs: JobLogChunk[] }> {
    const path = `/admin/jobs/${encodeURIComponent(id)}`;
    const first = await this.request("GET", path, getJobResponseSchema);
    const logs = [...first.logs];
    if (first.logsNextCursor !== null) {
      const query = new URLSearchParams({ after: first.logsNextCursor });
      logs.push(...(await this.walk(`${path}/logs`, query, listJobLogsResponseSchema, (page) => page.logs)));
    }
    return { job: first.job, logs };
  }

  /** Every job in submit order (all pages), or only those with `status`. */
  async listJobs(status?: JobStatus): Promise<JobView[]> {
    const query = new URLSearchParams(status === undefined ? {} : { status });
    return this.walk("/admin/jobs", query, listJobsResponseSchema, (page) => page.jobs);
  }

  /** Follows `nextCursor` from the query's page to the last one. */
  private async walk<S extends z.ZodType<{ nextCursor: string | null }, z.ZodTypeDef, unknown>, T>(
    path: string,
    query: URLSearchParams,
    schema: S,
    itemsOf: (page: z.output<S>) => T[],
  ): Promise<T[]> {
    const items: T[] = [];
    for (;;) {
      const text = query.toString();
      const page = await this.request("GET", `${path}${text ? `?${text}` : ""}`, schema);
      items.push(...itemsOf(page));
      if (page.nextCursor === null) return items;
      query.set("after", page.nextCursor);
    }
  }

  /** Cancels a queued job at once, asks the runner to cancel an assigned or running one; a finished job comes back unchanged. */
  async cancelJob(id: string): Promise<{ job: JobView }> {
    return this.request("POST", `/admin/jobs/${encodeURIComponent(id)}/cancel`, cancelJobResponseSchema, {});
  }

  /** One runner's devices, including those it removed (present: false, state offline). */
  async listRunnerDevices(runnerId: string): Promise<DeviceView[]> {
    const path = `/admin/runners/${encodeURIComponent(runnerId)}/devices`;
    return this.walk(path, new URLSearchParams(), listDevicesResponseSchema, (page) => page.devices);
  }

  /** Every runner's devices, optionally of one kind and/or one state. */
  async listDevices(filter: { kind?: string; state?: string } = {}): Promise<DeviceView[]> {
    const query = new URLSearchParams(
      Object.entries(filter).filter((entry): entry is [string, string] => entry[1] !== undefined),
    );
    return this.walk("/admin/devices", query, listDevicesResponseSchema, (page) => page.devices);
  }

  private request<S extends z.ZodTypeAny>(
    method: "GET" | "POST" | "PUT" | "DELETE",
    route: string,
    schema: S,
    body?: unknown,
  ): Promise<z.output<S>> {
    return requestApi(this.endpoint, { method, route, bearer: this.adminToken, body, schema }, (answer) =>
      toRequestError(method, route, answer),
    );
  }
}

function toRequestError(method: string, route: string, answer: ErrorAnswer): AdminRequestError {
  const code = answer.error?.code ?? "unknown";
  const message = answer.error?.message ?? answer.said;
  return new AdminRequestError(answer.status, code, `${method} ${route} failed: ${answer.status} ${code}: ${message}`);
}
