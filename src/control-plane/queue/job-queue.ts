// The job queue of the reference control plane: submit, dispatch to connected runners with
// credits, and every transition a runner or an admin causes, including the reaper's. The
// store (store/contract.ts) decides each transition with one atomic operation; this file
// decides what to try, keeps the per-connection state that is not worth persisting (credits,
// draining; labels and the paused flag are copies of the store's) and tells runners and
// listeners what happened. Store calls are asynchronous, so other messages and requests run
// between them: nothing here reads the store and then writes assuming the row stayed as read
// (the store's conditional updates say whether a transition happened), a runner's credit is
// taken before its claim is awaited, and one dispatch pass runs at a time. A pass claims the
// jobs of a page of the queue in one statement (store.claimMany), not one by one.
import type { EventEmitter } from "node:events";
import type { ControlMessage, JobRef, JobResult, RunnerMessage } from "../../protocol/channel.js";
import type { DeviceRequirement } from "../../protocol/devices.js";
import type { Logger } from "../../log/logger.js";
import type { JobRecord, JobStoreContract, NewJob, QueuedJob, QueuedRequirements } from "../store/contract.js";
import { generateAlphanumeric } from "../tokens.js";
import type { ReplicaBus, ReplicaSignal } from "./replica-bus.js";
import { StatementBatcher } from "./statement-batcher.js";

export type JobEventStatus =
  "submitted" | "assigned" | "accepted" | "started" | "result_applied" | "requeued" | "cancelled";

/** Emitted as `"job"` on the control plane's `events` at each transition. */
export interface JobEvent {
  jobId: string;
  attempt: number;
  status: JobEventStatus;
  /** process.hrtime.bigint() when it happened: for latency measurements. */
  at: bigint;
}

/** Emitted as `"runner"` when a runner's channel completes hello/welcome and when it closes. */
export interface RunnerEvent {
  runnerId: string;
  event: "connected" | "disconnected";
}

/** What the queue knows of a runner whose channel is up (after hello). */
export interface RunnerLink {
  readonly runnerId: string;
  /** The registered labels (never the runner's own claims): a job's requiredLabels must all be here. */
  labels: ReadonlySet<string>;
  /** From hello: credits never exceed it. */
  readonly capacity: number;
  /** Assignments the runner has granted (ready) and not yet received. */
  credits: number;
  /** Said goodbye: gets no more assignments. */
  draining: boolean;
  /** An admin paused the runner: no assignments until resumed; its credits are kept meanwhile. */
  paused: boolean;
  /** Order of the last hand-out, to share work among runners with equal credits. */
  lastAssigned: number;
  /** `${jobId} ${attempt}` handed out on this link and not yet accepted or rejected (see accept). */
  readonly handedOut: Set<string>;
  /** performance.now() of the last lease renewal written for this runner. */
  leasesRenewedAt: number;
  send(message: ControlMessage): void;
}

/** Answers "does this runner have such a device online?" (the device store). */
export interface DeviceMatcher {
  hasOnlineDevice(runnerId: string, requirement: DeviceRequirement): Promise<boolean>;
}

export interface JobQueueOptions {
  store: JobStoreContract;
  /** Without it, a job that requires devices is never dispatched. */
  devices?: DeviceMatcher;
  logger: Logger;
  now: () => Date;
  leaseMs: number;
  events: EventEmitter;
  /** Tells the other replicas on the same database what only the holder of a runner's socket can do. */
  bus: ReplicaBus;
}

type HelloMessage = Extract<RunnerMessage, { type: "hello" }>;
type CancelMessage = Extract<ControlMessage, { type: "cancel" }>;

/** At most this many `started` (or `result`) reports in one statement. */
const REPORT_BATCH = 128;
/** The dispatcher reads queued jobs in pages of this size. */
const DISPATCH_PAGE = 256;
/**
 * Up to this many distinct requirement groups some runner can take, the dispatcher reads only
 * their jobs (one index range each); past it, the statement would grow too long, and it reads
 * the queue in submit order as it is, skipping what no runner takes.
 */
const MAX_FILTER_GROUPS = 64;

/** Per dispatch pass: `${runnerId} ${devices key}` → whether the runner has those devices online. */
type DeviceAnswers = Map<string, boolean>;
/** A job a runner rejected is not offered to that runner again for this long. */
export const REJECT_COOLDOWN_MS = 1000;
/**
 * Lease writes for one runner happen at most once per leaseMs / 10: a runner that keeps
 * talking always has at least nine tenths of its lease ahead, and a busy runner costs one
 * write per leaseMs / 10 rather than one per job (a claim writes its job's lease itself).
 */
const RENEWAL_FRACTION = 10;

export class JobQueue {
  private readonly runners = new Map<string, RunnerLink>();
  /** `${jobId} ${runnerId}` → performance.now() until which that runner is not offered that job. */
  private readonly rejectCooldowns = new Map<string, number>();
  private handOuts = 0;
  private readonly renewalIntervalMs: number;
  /** The dispatch passes running now (one at a time), and whether another was asked for meanwhile. */
  private dispatching: Promise<void> | undefined;
  private dispatchAgain = false;
  /** The last pass failed (a database error, say): the reaper's next tick tries again. */
  private dispatchFailed = false;
  /** Jobs whose submit waits for its dispatch pass → the record as claimed here, once it is. */
  private readonly submitted = new Map<string, JobRecord | undefined>();
  /**
   * The last pass found no queued job that any runner with credits could take, and nothing
   * that could change that (a job, a runner's labels, pause or devices, a new runner with
   * credits: each asks for a pass) happened since. A `ready` from a runner that already had
   * credits then changes nothing either, and runs no pass: 200 `ready`s cost no queue reads.
   */
  private settled = false;

  /** `started` and `result` of many runners, a statement per batch (statement-batcher.ts). */
  private readonly startedReports: StatementBatcher<{ ref: JobRef; runnerId: string; at: Date }, JobRecord>;
  private readonly resultReports: StatementBatcher<{ result: JobResult; runnerId: string; at: Date }, JobRecord>;

  constructor(private readonly options: JobQueueOptions) {
    this.startedReports = new StatementBatcher(
      (report) => report.ref.jobId,
      (job) => job.id,
      (reports) => options.store.markRunningMany(reports),
      REPORT_BATCH,
    );
    this.resultReports = new StatementBatcher(
      (report) => report.result.jobId,
      (job) => job.id,
      (reports) => options.store.applyResults(reports),
      REPORT_BATCH,
    );
    this.renewalIntervalMs = options.leaseMs / RENEWAL_FRACTION;
  }

  // ---- runners coming and going ----

  /**
   * Squares the runner's hello with the store, before the welcome: jobs it runs with the
   * attempt the store gave it keep their lease; any other job it runs is fenced (the caller
   * sends `cancel` for each after the welcome); jobs the store gave it that it mentions
   * neither as running nor as a pending result are lost, and go back to the queue.
   */
  async reconcileHello(link: RunnerLink, hello: HelloMessage): Promise<{ fenced: JobRef[]; cancels: CancelMessage[] }> {
    const { store, now } = this.options;
    const held = new Map((await store.listActiveForRunner(link.runnerId)).map((job) => [job.id, job]));
    const fenced: JobRef[] = [];
    const cancels: CancelMessage[] = [];
    const mentioned = new Set<string>();
    for (const ref of hello.running) {
      const job = held.get(ref.jobId);
      if (!job || job.attempt !== ref.attempt) {
        fenced.push({ jobId: ref.jobId, attempt: ref.attempt });
        cancels.push(cancelMessage(ref, "fenced: this attempt is no longer assigned to this runner"));
        continue;
      }
      mentioned.add(ref.jobId);
      // Its `started` may have been lost with the old connection.
      if (job.status === "assigned" && (await store.markRunning(ref, link.runnerId, now()))) this.emit(ref, "started");
      if (job.cancelRequested) cancels.push(cancelMessage(ref, "cancelled by an admin"));
    }
    for (const ref of hello.pendingResults) {
      if (held.get(ref.jobId)?.attempt === ref.attempt) mentioned.add(ref.jobId);
    }
    let lost = 0;
    for (const job of held.values()) {
      if (mentioned.has(job.id)) continue;
      this.options.logger.warn(
        { runnerId: link.runnerId, jobId: job.id, attempt: job.attempt },
        "runner lost a job it held: re-queued",
      );
      if (await this.releaseJob({ jobId: job.id, attempt: job.attempt }, link.runnerId)) lost++;
    }
    if (fenced.length > 0)
      this.options.logger.info({ runnerId: link.runnerId, fenced }, "runner reported jobs it no longer holds: fenced");
    await this.renewLeases(link, true);
    // Other runners may take the lost jobs now; this one has no credits before its `ready`.
    if (lost > 0) void this.dispatch();
    return { fenced, cancels };
  }

  /** The runner's channel is up (after the welcome). Replaces an older link of the same runner. */
  connect(link: RunnerLink): void {
    this.runners.set(link.runnerId, link);
  }

  /** Whether the runner's channel is up (after its welcome). */
  isConnected(runnerId: string): boolean {
    return this.runners.has(runnerId);
  }

  /** The runner's channel closed. Its jobs keep their leases: it may come back in time. */
  disconnect(link: RunnerLink): void {
    if (this.runners.get(link.runnerId) === link) this.runners.delete(link.runnerId);
  }

  /** `ready`: the runner grants `slots` more assignments. */
  grantCredits(link: RunnerLink, slots: number): void {
    const hadCredits = link.credits > 0;
    const granted = link.credits + slots;
    if (granted > link.capacity) {
      this.options.logger.warn(
        { runnerId: link.runnerId, credits: granted, capacity: link.capacity },
        "ready grants more than the capacity: capped",
      );
    }
    link.credits = Math.min(granted, link.capacity);
    if (hadCredits && this.settled && this.runners.get(link.runnerId) === link) return;
    void this.dispatch();
  }

  /** `goodbye`: no more assignments to this runner; what it runs may still report. */
  drain(link: RunnerLink, reason: string): void {
    link.draining = true;
    link.credits = 0;
    this.options.logger.info({ runnerId: link.runnerId, reason }, "runner said goodbye: no more assignments");
  }

  /**
   * An admin paused (`reason`) or resumed (`null`) the runner; the store already says so. A
   * connected runner is told at once (`pause` / `resume`); one that connects later learns it
   * from `welcome.paused`. Credits survive a pause and are counted as always (a runner keeps
   * granting them), so they are exact when `resume` comes; the runner sends nothing back to it.
   */
  setPaused(runnerId: string, pause: { reason: string } | null): void {
    const link = this.runners.get(runnerId);
    if (!link) return this.options.bus.publish({ kind: "paused", runnerId, reason: pause?.reason ?? null });
    if (pause) {
      link.paused = true;
      link.send({ type: "pause", reason: pause.reason });
      return;
    }
    // Sent only on a change: a runner that is not paused has nothing to answer to it.
    if (!link.paused) return;
    link.paused = false;
    link.send({ type: "resume" });
    void this.dispatch();
  }

  /** An admin changed the runner's registered labels: a connected runner matches with them from now on. */
  setLabels(runnerId: string, labels: readonly string[]): void {
    const link = this.runners.get(runnerId);
    if (!link) return this.options.bus.publish({ kind: "labels", runnerId, labels: [...labels] });
    link.labels = new Set(labels);
    void this.dispatch();
  }

  /** Every message or ping from a runner extends its leases (written at most every renewalIntervalMs). */
  async renewLeases(link: RunnerLink, force = false): Promise<void> {
    const at = performance.now();
    // Checked and set before the write is awaited: the frames that follow do not write again.
    if (!force && at - link.leasesRenewedAt < this.renewalIntervalMs) return;
    link.leasesRenewedAt = at;
    await this.options.store.renewLeases(link.runnerId, this.leaseExpiry());
  }

  /** At start-up, every active lease runs for a full leaseMs from now: runners need time to reconnect. */
  async extendLeasesAfterStart(): Promise<void> {
    const extended = await this.options.store.extendActiveLeases(this.leaseExpiry());
    if (extended > 0)
      this.options.logger.info(
        { jobs: extended, leaseMs: this.options.leaseMs },
        "leases of active jobs extended for their runners to reconnect",
      );
  }

  // ---- submit and dispatch ----

  /**
   * Stores the job, then waits for the dispatch pass that may hand it out. Returns the job as
   * this replica's pass claimed it, or as inserted (`queued`) when no pass here claimed it: it
   * may have been claimed by another replica meanwhile, which only the store can say.
   */
  async submit(input: Omit<NewJob, "id" | "submittedAt">): Promise<{ job: JobRecord; claimedHere: boolean }> {
    // The other replicas are told (a runner on another replica may be the one free) by the
    // INSERT itself when the bus lets it carry the notice, else by a NOTIFY of its own after
    // the commit (coalesced with the one on its way); either way before this replica's pass.
    const notice = this.options.bus.carryDispatch();
    let job: JobRecord;
    try {
      job = await this.options.store.insert(
        { ...input, id: "job_" + generateAlphanumeric(24), submittedAt: this.options.now() },
        notice,
      );
    } finally {
      notice?.done();
    }
    this.emit({ jobId: job.id, attempt: 0 }, "submitted");
    if (!notice) this.options.bus.publish({ kind: "dispatch" });
    this.submitted.set(job.id, undefined);
    try {
      await this.dispatch();
      const claimed = this.submitted.get(job.id);
      return claimed ? { job: claimed, claimedHere: true } : { job, claimedHere: false };
    } finally {
      this.submitted.delete(job.id);
    }
  }

  /**
   * Hands queued jobs, in submit order, to runners that have credits and every required
   * label. One pass runs at a time; asked for during a pass, another pass follows it (the
   * running one may have read the queue or the credits before the change that asked). The
   * promise resolves once no pass is pending and never rejects: a failure is logged.
   */
  dispatch(): Promise<void> {
    this.settled = false;
    this.dispatchAgain = true;
    this.dispatching ??= this.runDispatchPasses();
    return this.dispatching;
  }

  private async runDispatchPasses(): Promise<void> {
    try {
      while (this.dispatchAgain) {
        this.dispatchAgain = false;
        try {
          const settled = await this.dispatchPass();
          this.dispatchFailed = false;
          // Asked for again meanwhile: something may have changed after the pass read it.
          this.settled = settled && !this.dispatchAgain;
        } catch (error) {
          this.dispatchFailed = true;
          this.options.logger.error({ err: error }, "dispatch failed");
        }
      }
    } finally {
      // No await between the loop's last check and here: a request cannot fall in between.
      this.dispatching = undefined;
    }
  }

  /**
   * Work proportional to what can match, not to the queue: the queue's distinct requirement
   * groups are read from an index, those no runner with credits can take are left out, and
   * past the head of the queue only the jobs of the others are read (in submit order, as
   * before). The groups and the head come in one statement (one round trip, not two: the
   * pass that hands out a job just submitted costs that and the claim), and the head is no
   * longer than this replica's free credits, the most one page can hand out: a thousand queued
   * jobs that no connected runner qualifies for cost one index read and at most that many
   * rows per pass, whatever the number of `ready` frames (passes coalesce: one runs, at most
   * one more is pending).
   */
  /** Returns true when no queued job could go to any runner with credits (see `settled`). */
  private async dispatchPass(): Promise<boolean> {
    const credits = this.freeCredits();
    if (credits === 0) return false;
    const answers: DeviceAnswers = new Map();
    const headLimit = Math.min(credits, DISPATCH_PAGE);
    const { groups, head } = await this.options.store.listQueuedHead(headLimit);
    const takeable: QueuedRequirements["key"][] = [];
    for (const group of groups) if (await this.anyRunnerTakes(group, answers)) takeable.push(group.key);
    if (takeable.length === 0) return true;
    const only = takeable.length <= MAX_FILTER_GROUPS ? takeable : undefined;
    // The head is the first page, unfiltered: pickRunner skips its jobs no runner takes, and
    // the pages after it (filtered) start past its last job, so none is skipped or seen twice.
    let first: QueuedJob[] | undefined = head;
    let after = 0;
    while (this.anyCredits()) {
      const limit = first ? headLimit : DISPATCH_PAGE;
      const page = first ?? (await this.options.store.listQueued(after, DISPATCH_PAGE, only));
      first = undefined;
      // The page's jobs are paired with runners here, then claimed in one statement: one
      // database round trip per page, however many jobs it hands out.
      const picks: { jobId: string; link: RunnerLink }[] = [];
      for (const job of page) {
        after = job.position;
        const link = await this.pickRunner(job.id, job.requiredLabels, job.requiredDevices, answers);
        // The runner may have spent its credits or gone while its devices were looked up.
        if (link && takesJobs(link) && this.runners.get(link.runnerId) === link) {
          // Its credit is taken now, before the claim is awaited, so that nothing else spends it
          // meanwhile, and its turn too: the next job goes to another runner among equals.
          link.credits -= 1;
          link.lastAssigned = ++this.handOuts;
          picks.push({ jobId: job.id, link });
        }
        if (!this.anyCredits()) break;
      }
      await this.handOut(picks);
      if (page.length < limit) return false;
    }
    return false;
  }

  /** Whether some runner with credits has the group's labels and devices (cooldowns aside: they are per job). */
  private async anyRunnerTakes(group: QueuedRequirements, answers: DeviceAnswers): Promise<boolean> {
    for (const link of this.runners.values()) {
      if (!takesJobs(link) || !group.requiredLabels.every((label) => link.labels.has(label))) continue;
      if (await this.hasDevicesCached(link.runnerId, group.requiredDevices, answers)) return true;
    }
    return false;
  }

  private async hasDevicesCached(
    runnerId: string,
    requiredDevices: readonly DeviceRequirement[],
    answers: DeviceAnswers,
  ): Promise<boolean> {
    if (requiredDevices.length === 0) return true;
    const key = `${runnerId} ${JSON.stringify(requiredDevices)}`;
    let answer = answers.get(key);
    if (answer === undefined) {
      answer = await this.hasDevices(runnerId, requiredDevices);
      answers.set(key, answer);
    }
    return answer;
  }

  /** The credits of the runners that take jobs now (paused and draining ones' do not count). */
  private freeCredits(): number {
    let credits = 0;
    for (const link of this.runners.values()) if (takesJobs(link)) credits += link.credits;
    return credits;
  }

  private anyCredits(): boolean {
    for (const link of this.runners.values()) if (takesJobs(link)) return true;
    return false;
  }

  /** The eligible runner with the most credits; among equals, the one served longest ago. */
  private async pickRunner(
    jobId: string,
    requiredLabels: readonly string[],
    requiredDevices: readonly DeviceRequirement[],
    answers: DeviceAnswers,
  ): Promise<RunnerLink | undefined> {
    const eligible = (link: RunnerLink) =>
      takesJobs(link) &&
      requiredLabels.every((label) => link.labels.has(label)) &&
      !this.isCoolingDown(jobId, link.runnerId);
    if (requiredDevices.length === 0) {
      let best: RunnerLink | undefined;
      for (const link of this.runners.values()) if (eligible(link) && (!best || prefers(link, best))) best = link;
      return best;
    }
    // The store is asked about devices only for jobs that need them, best candidate first.
    const candidates = [...this.runners.values()].filter(eligible).sort((a, b) => (prefers(a, b) ? -1 : 1));
    for (const link of candidates)
      if (await this.hasDevicesCached(link.runnerId, requiredDevices, answers)) return link;
    return undefined;
  }

  /** Claims the picked jobs for their runners, and sends each runner what it got. */
  private async handOut(picks: readonly { jobId: string; link: RunnerLink }[]): Promise<void> {
    if (picks.length === 0) return;
    const now = this.options.now();
    const leaseExpiresAt = this.leaseExpiry(now);
    const claims = picks.map(({ jobId, link }) => ({ jobId, runnerId: link.runnerId }));
    let claimed = new Map<string, JobRecord>();
    try {
      claimed = new Map((await this.options.store.claimMany(claims, now, leaseExpiresAt)).map((job) => [job.id, job]));
    } finally {
      // Not claimed (or failed): another control plane on the same database may have claimed it
      // first. The credit comes back (within the capacity).
      for (const { jobId, link } of picks)
        if (!claimed.has(jobId)) link.credits = Math.min(link.credits + 1, link.capacity);
    }
    // Another replica took some of these first: the queue changed after this pass read it, and
    // the credits that came back may fit the jobs behind those, so another pass follows.
    if (claimed.size < picks.length) this.dispatchAgain = true;
    for (const { jobId, link } of picks) {
      const job = claimed.get(jobId);
      if (!job) continue;
      if (this.submitted.has(jobId)) this.submitted.set(jobId, job);
      link.handedOut.add(attemptKey(jobId, job.attempt));
      this.emit({ jobId, attempt: job.attempt }, "assigned");
      link.send({
        type: "assign",
        jobId,
        attempt: job.attempt,
        job: job.spec,
        timeoutMs: job.timeoutMs,
        cancelGraceMs: job.cancelGraceMs,
        leaseExpiresAt: leaseExpiresAt.toISOString(),
      });
    }
  }

  // ---- what runners report ----

  /**
   * An attempt this very link was handed here is accepted without asking the store: were it
   * taken from the runner since (its lease expired), the reaper sent the cancel, and whatever
   * the runner says next about it (started, log, result) is fenced by the store's conditional
   * updates. Any other accept is checked against the store.
   */
  async accept(link: RunnerLink, ref: JobRef): Promise<void> {
    if (
      !link.handedOut.delete(attemptKey(ref.jobId, ref.attempt)) &&
      !(await this.options.store.holds(ref, link.runnerId))
    )
      return this.fence(link, ref, "accept");
    this.emit(ref, "accepted");
  }

  /** `reject`: the job goes back to the queue (attempt + 1 at its next hand-out). */
  async reject(link: RunnerLink, ref: JobRef, reason: string): Promise<void> {
    link.handedOut.delete(attemptKey(ref.jobId, ref.attempt));
    const job = await this.releaseJob(ref, link.runnerId);
    if (!job) return this.fence(link, ref, "reject");
    this.options.logger.info({ runnerId: link.runnerId, ...ref, reason }, "runner rejected a job: re-queued");
    this.rejectCooldowns.set(cooldownKey(ref.jobId, link.runnerId), performance.now() + REJECT_COOLDOWN_MS);
    void this.dispatch();
  }

  async started(link: RunnerLink, ref: JobRef): Promise<void> {
    const { store, now } = this.options;
    link.handedOut.delete(attemptKey(ref.jobId, ref.attempt));
    if (await this.startedReports.submit({ ref, runnerId: link.runnerId, at: now() })) this.emit(ref, "started");
    else if (!(await store.holds(ref, link.runnerId))) this.fence(link, ref, "started");
  }

  /** Stores a log chunk of the runner's current attempt; repeats and other attempts are dropped. */
  /** Applies a result at most once and always acknowledges it, so the runner can drop it. */
  async applyResult(link: RunnerLink, result: JobResult): Promise<void> {
    const { store, now, logger } = this.options;
    link.handedOut.delete(attemptKey(result.jobId, result.attempt));
    const applied = (await this.resultReports.submit({ result, runnerId: link.runnerId, at: now() })) !== undefined;
    if (applied) {
      this.emit(result, "result_applied");
      this.logApplied(link, result);
    } else {
      const current = await store.find(result.jobId);
      logger.info(
        {
          runnerId: link.runnerId,
          jobId: result.jobId,
          attempt: result.attempt,
          currentAttempt: current?.attempt,
          status: current?.status,
        },
        "result acknowledged without applying it: duplicate, stale attempt or unknown job",
      );
    }
    link.send({ type: "result_ack", jobId: result.jobId, attempt: result.attempt, applied });
  }

  /**
   * One info line per applied result: the audit trail that shows a result was applied at most
   * once per attempt (the fault suite counts these lines across control-plane restarts).
   */
  private logApplied(link: RunnerLink, result: JobResult): void {
    this.options.logger.info(
      { runnerId: link.runnerId, jobId: result.jobId, attempt: result.attempt, outcome: result.outcome },
      "result applied",
    );
  }

  // ---- admin and reaper ----

  /** Queued: cancelled at once. Assigned/running: cancel requested and sent to the runner if it is connected (else at its hello). */
  async cancel(jobId: string): Promise<JobRecord | undefined> {
    const outcome = await this.options.store.requestCancel(jobId, this.options.now());
    if (!outcome) return undefined;
    const { job, change } = outcome;
    if (change === "cancelled") this.emit({ jobId, attempt: job.attempt }, "cancelled");
    if (job.cancelRequested && (job.status === "assigned" || job.status === "running") && job.runnerId !== null) {
      // Sent again on a repeated request: harmless for the runner, and covers a lost frame.
      this.sendCancel(job.runnerId, { jobId, attempt: job.attempt }, "cancelled by an admin");
    }
    this.options.logger.info({ jobId, attempt: job.attempt, status: job.status, change }, "job cancel requested");
    return job;
  }

  /** Re-queues (or cancels, when asked to) every job whose lease expired, then dispatches. */
  async reapExpiredLeases(): Promise<void> {
    const { store, now, logger } = this.options;
    const at = now();
    let requeued = false;
    // Every replica reaps: releaseExpired is conditional on the attempt and the expired lease, so one wins.
    for (const expired of await store.listExpired(at)) {
      const job = await store.releaseExpired(expired, at);
      if (!job) continue;
      logger.warn(
        { jobId: job.id, attempt: expired.attempt, runnerId: expired.runnerId, status: job.status },
        "job lease expired",
      );
      this.emit({ jobId: job.id, attempt: expired.attempt }, job.status === "cancelled" ? "cancelled" : "requeued");
      // Should the runner still be connected after all (here or elsewhere), it must stop this attempt.
      if (expired.runnerId !== null) this.sendCancel(expired.runnerId, expired, "lease expired");
      if (job.status === "queued") requeued = true;
    }
    if (requeued) this.options.bus.publish({ kind: "dispatch" });
    // A pass only when this tick changed what can be handed out (everything else that can asks
    // for one itself), or the last one failed: an idle control plane does not read its queue every tick.
    if (this.forgetExpiredCooldowns() || requeued || this.dispatchFailed) await this.dispatch();
  }

  // ---- other replicas ----

  /** A signal from another replica about what this one may hold (the channel handles `connected` and `ended`). */
  applySignal(signal: Exclude<ReplicaSignal, { kind: "connected" | "ended" | "admin_token" }>): void {
    switch (signal.kind) {
      case "dispatch":
        return void this.dispatch();
      case "cancel":
        return this.runners.get(signal.runnerId)?.send(cancelMessage(signal, signal.reason));
      case "paused":
        if (this.runners.has(signal.runnerId))
          this.setPaused(signal.runnerId, signal.reason === null ? null : { reason: signal.reason });
        return;
      case "labels":
        if (this.runners.has(signal.runnerId)) this.setLabels(signal.runnerId, signal.labels);
        return;
      default: {
        const unhandled: never = signal;
        throw new Error(`unhandled replica signal ${JSON.stringify(unhandled)}`);
      }
    }
  }

  /**
   * After the bus's listener reconnected: whatever was said meanwhile is read back from the
   * store. A dispatch pass, and the cancel of every job an admin asked to cancel that a runner
   * connected here holds (the runner ignores a repeated cancel).
   */
  async resync(): Promise<void> {
    for (const link of [...this.runners.values()]) {
      for (const job of await this.options.store.listActiveForRunner(link.runnerId))
        if (job.cancelRequested)
          link.send(cancelMessage({ jobId: job.id, attempt: job.attempt }, "cancelled by an admin"));
    }
    await this.dispatch();
  }

  // ---- helpers ----

  /** To the runner's socket here, or through the bus to the replica that holds it. */
  private sendCancel(runnerId: string, ref: JobRef, reason: string): void {
    const link = this.runners.get(runnerId);
    if (link) link.send(cancelMessage(ref, reason));
    else this.options.bus.publish({ kind: "cancel", runnerId, jobId: ref.jobId, attempt: ref.attempt, reason });
  }

  private async releaseJob(ref: JobRef, runnerId: string): Promise<JobRecord | undefined> {
    const job = await this.options.store.release(ref, runnerId, this.options.now());
    if (job) this.emit(ref, job.status === "cancelled" ? "cancelled" : "requeued");
    if (job?.status === "queued") this.options.bus.publish({ kind: "dispatch" });
    return job;
  }

  /** A runner spoke of an attempt it does not hold: tell it to stop that attempt. */
  private fence(link: RunnerLink, ref: JobRef, what: string): void {
    this.options.logger.info(
      { runnerId: link.runnerId, ...ref, message: what },
      "message about an attempt the runner does not hold: fenced",
    );
    link.send(cancelMessage(ref, "fenced: this attempt is no longer assigned to this runner"));
  }

  /** Every requirement met by a device of the runner's that is online (the store is asked only for jobs that need devices). */
  private async hasDevices(runnerId: string, requiredDevices: readonly DeviceRequirement[]): Promise<boolean> {
    const devices = this.options.devices;
    if (devices === undefined) return false;
    for (const requirement of requiredDevices)
      if (!(await devices.hasOnlineDevice(runnerId, requirement))) return false;
    return true;
  }

  private isCoolingDown(jobId: string, runnerId: string): boolean {
    if (this.rejectCooldowns.size === 0) return false;
    const until = this.rejectCooldowns.get(cooldownKey(jobId, runnerId));
    return until !== undefined && until > performance.now();
  }

  /** Drops the cooldowns that ran out; true when there were any (their jobs may go to their runners now). */
  private forgetExpiredCooldowns(): boolean {
    const at = performance.now();
    let any = false;
    for (const [key, until] of this.rejectCooldowns)
      if (until <= at) {
        this.rejectCooldowns.delete(key);
        any = true;
      }
    return any;
  }

  private leaseExpiry(now = this.options.now()): Date {
    return new Date(now.getTime() + this.options.leaseMs);
  }

  private emit(ref: JobRef | { jobId: string; attempt: number }, status: JobEventStatus): void {
    const event: JobEvent = { jobId: ref.jobId, attempt: ref.attempt, status, at: process.hrtime.bigint() };
    this.options.events.emit("job", event);
  }
}

/** Whether `a` is a better pick than `b`: more credits; among equals, served longer ago. */
function prefers(a: RunnerLink, b: RunnerLink): boolean {
  return a.credits > b.credits || (a.credits === b.credits && a.lastAssigned < b.lastAssigned);
}

/** Has credits, and neither said goodbye nor is paused. */
function takesJobs(link: RunnerLink): boolean {
  return link.credits > 0 && !link.draining && !link.paused;
}

function cancelMessage(ref: JobRef, reason: string): CancelMessage {
  return { type: "cancel", jobId: ref.jobId, attempt: ref.attempt, reason };
}

function attemptKey(jobId: string, attempt: number): string {
  return `${jobId} ${attempt}`;
}

function cooldownKey(jobId: string, runnerId: string): string {
  return `${jobId} ${runnerId}`;
}
