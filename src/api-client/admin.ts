// A small typed client for the admin API, used by tests, the demo and the CLI. Answers are
// validated with the protocol schemas; errors say status, code and message but never carry
// the admin token.
import type { z } from "zod";
import {
  API_PREFIX,
  cancelJobResponseSchema,
  createRegistrationTokenResponseSchema,
  errorBodySchema,
  getJobResponseSchema,
  listDevicesResponseSchema,
  listJobsResponseSchema,
  listRunnersResponseSchema,
  submitJobResponseSchema,
  verifyResponseSchema,
  type CreateRegistrationTokenResponse,
  type DeviceView,
  type JobStatus,
  type JobView,
  type RunnerView,
  type SubmitJobRequest,
} from "../protocol/http.js";
import { RunnerError } from "../errors.js";

/** A non-2xx answer from the admin API. */
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
  private readonly baseUrl: string;

  constructor(
    url: string,
    private readonly adminToken: string,
  ) {
    this.baseUrl = url.replace(/\/+$/, "") + API_PREFIX;
  }

  /** Creates a one-time registration token (default lifetime: the server's, one hour). */
  async createRegistrationToken(expiresInSeconds?: number): Promise<CreateRegistrationTokenResponse> {
    const body = expiresInSeconds === undefined ? {} : { expiresInSeconds };
    return this.request("POST", "/admin/registration-tokens", createRegistrationTokenResponseSchema, body);
  }

  async listRunners(): Promise<RunnerView[]> {
    return (await this.request("GET", "/admin/runners", listRunnersResponseSchema)).runners;
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
    await this.request("DELETE", `/admin/runners/${encodeURIComponent(id)}`, null);
  }

  /** Queues a job; the answer shows it as it is right after dispatch (often already assigned). */
  async submitJob(request: SubmitJobRequest): Promise<{ job: JobView }> {
    return this.request("POST", "/admin/jobs", submitJobResponseSchema, request);
  }

  /** The job with its log chunks, ordered by attempt then seq. */
  async getJob(id: string): Promise<z.output<typeof getJobResponseSchema>> {
    return this.request("GET", `/admin/jobs/${encodeURIComponent(id)}`, getJobResponseSchema);
  }

  /** Every job in submit order, or only those with `status`. */
  async listJobs(status?: JobStatus): Promise<JobView[]> {
    const query = status === undefined ? "" : `?status=${encodeURIComponent(status)}`;
    return (await this.request("GET", `/admin/jobs${query}`, listJobsResponseSchema)).jobs;
  }

  /** Cancels a queued job at once, asks the runner to cancel an assigned or running one; a finished job comes back unchanged. */
  async cancelJob(id: string): Promise<{ job: JobView }> {
    return this.request("POST", `/admin/jobs/${encodeURIComponent(id)}/cancel`, cancelJobResponseSchema, {});
  }

  /** One runner's devices, including those it removed (present: false, state offline). */
  async listRunnerDevices(runnerId: string): Promise<DeviceView[]> {
    return (
      await this.request("GET", `/admin/runners/${encodeURIComponent(runnerId)}/devices`, listDevicesResponseSchema)
    ).devices;
  }

  /** Every runner's devices, optionally of one kind and/or one state. */
  async listDevices(filter: { kind?: string; state?: string } = {}): Promise<DeviceView[]> {
    const query = new URLSearchParams(
      Object.entries(filter).filter((entry): entry is [string, string] => entry[1] !== undefined),
    ).toString();
    return (await this.request("GET", `/admin/devices${query ? `?${query}` : ""}`, listDevicesResponseSchema)).devices;
  }

  private async request<S extends z.ZodTypeAny>(
    method: string,
    path: string,
    schema: S,
    body?: unknown,
  ): Promise<z.output<S>>;
  private async request(method: string, path: string, schema: null, body?: unknown): Promise<undefined>;
  private async request(method: string, path: string, schema: z.ZodTypeAny | null, body?: unknown): Promise<unknown> {
    const url = this.baseUrl + path;
    let response: Response;
    try {
      response = await fetch(url, {
        method,
        headers: {
          authorization: `Bearer ${this.adminToken}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new RunnerError(
        "control_plane_unavailable",
        `cannot reach the control plane at ${url}: ${describeCause(error)}`,
        {
          cause: error,
        },
      );
    }
    const text = await response.text();
    if (!response.ok) throw toRequestError(method, path, response.status, text);
    if (schema === null) return undefined;
    const parsed = schema.safeParse(safeParseJson(text));
    if (!parsed.success) {
      throw new RunnerError(
        "control_plane_rejected",
        `${method} ${path}: unexpected answer from the control plane: ${parsed.error.message}`,
      );
    }
    return parsed.data;
  }
}

function toRequestError(method: string, path: string, status: number, text: string): AdminRequestError {
  const parsed = errorBodySchema.safeParse(safeParseJson(text));
  const code = parsed.success ? parsed.data.error.code : "unknown";
  const message = parsed.success ? parsed.data.error.message : text.slice(0, 200);
  return new AdminRequestError(status, code, `${method} ${path} failed: ${status} ${code}: ${message}`);
}

function safeParseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** fetch hides the useful part ("ECONNREFUSED") in `cause`. */
function describeCause(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (error as Error).message;
}
