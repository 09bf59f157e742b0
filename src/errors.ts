// Typed errors with a stable `code`, and the one place that maps them to the exit code a
// person (or a service manager) sees. Exit codes are documented in README.md; the service
// units use NEEDS_OPERATOR so that a runner that cannot fix itself does not restart-loop.

export const ExitCode = {
  OK: 0,
  /** Something unexpected: a bug or an unanticipated environment failure. */
  INTERNAL: 1,
  /** Bad command line, bad config file, bad input. */
  USAGE: 2,
  /** `runner verify` found problems. */
  UNHEALTHY: 3,
  /** Another live runner holds the state dir's lock. */
  ALREADY_RUNNING: 4,
  /** The registration token was refused: unknown, already used or expired (sysexits EX_NOPERM). */
  TOKEN_REFUSED: 77,
  /** The control plane could not be reached or answered 5xx; trying again later may work. */
  UNAVAILABLE: 69,
  /** The runner cannot continue without a person: revoked credential, deleted registration... */
  NEEDS_OPERATOR: 78,
  /** The control plane refuses this protocol or agent version (HTTP 426). */
  UPGRADE_REQUIRED: 79,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/**
 * Exits of `runner start` that restarting cannot fix: bad settings, another runner on the
 * state dir, a person must act, a newer runner is needed. systemd is told them
 * (RestartPreventExitStatus); under launchd they leave the keep-alive marker.
 */
export const NO_RESTART_EXITS: readonly number[] = [
  ExitCode.USAGE,
  ExitCode.ALREADY_RUNNING,
  ExitCode.NEEDS_OPERATOR,
  ExitCode.UPGRADE_REQUIRED,
];

export type ErrorCode =
  | "usage"
  | "config_invalid"
  | "not_registered"
  | "already_registered"
  | "lock_held"
  | "state_invalid"
  /** The state dir belongs to another user than the one running the command (root included). */
  | "state_dir_owner"
  | "keychain_unavailable"
  | "credential_missing"
  | "credential_revoked"
  | "runner_deleted"
  | "host_fingerprint_mismatch"
  | "upgrade_required"
  | "control_plane_unavailable"
  | "control_plane_rejected"
  /** 401, 403 or 404 without a protocol error body (a proxy, a wrong URL...). */
  | "control_plane_refused"
  | "registration_token_invalid"
  | "needs_operator"
  | "database_unavailable"
  | "service_failed"
  | "internal";

const exitCodes: Record<ErrorCode, ExitCode> = {
  usage: ExitCode.USAGE,
  config_invalid: ExitCode.USAGE,
  not_registered: ExitCode.NEEDS_OPERATOR,
  already_registered: ExitCode.USAGE,
  lock_held: ExitCode.ALREADY_RUNNING,
  // A link or foreign file type where a state file belongs: `runner repair` moves it aside.
  state_invalid: ExitCode.NEEDS_OPERATOR,
  state_dir_owner: ExitCode.NEEDS_OPERATOR,
  keychain_unavailable: ExitCode.NEEDS_OPERATOR,
  credential_missing: ExitCode.NEEDS_OPERATOR,
  credential_revoked: ExitCode.NEEDS_OPERATOR,
  runner_deleted: ExitCode.NEEDS_OPERATOR,
  host_fingerprint_mismatch: ExitCode.NEEDS_OPERATOR,
  upgrade_required: ExitCode.UPGRADE_REQUIRED,
  control_plane_unavailable: ExitCode.UNAVAILABLE,
  control_plane_rejected: ExitCode.USAGE,
  control_plane_refused: ExitCode.NEEDS_OPERATOR,
  registration_token_invalid: ExitCode.TOKEN_REFUSED,
  needs_operator: ExitCode.NEEDS_OPERATOR,
  // The control plane's PostgreSQL cannot be reached at start: a service manager may retry.
  database_unavailable: ExitCode.UNAVAILABLE,
  service_failed: ExitCode.INTERNAL,
  internal: ExitCode.INTERNAL,
};

export class RunnerError extends Error {
  override readonly name = "RunnerError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown; hint?: string },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.hint = options?.hint;
  }
  /** What the person should do next, e.g. the exact command to run. */
  readonly hint: string | undefined;
}

export function exitCodeFor(error: unknown): ExitCode {
  return error instanceof RunnerError ? exitCodes[error.code] : ExitCode.INTERNAL;
}

/** The text a person sees for an error: message, then the hint on its own line. */
export function describeError(error: unknown): string {
  if (error instanceof RunnerError) {
    return error.hint ? `${error.message}\n  → ${error.hint}` : error.message;
  }
  if (error instanceof Error) return `unexpected error: ${error.message}`;
  return `unexpected error: ${String(error)}`;
}

/**
 * The default of an exhaustive `switch`: the compiler rejects the call while a case is
 * missing (`value` is not `never` then), and at run time it only throws on a value the types
 * rule out (a bug).
 */
export function unreachable(value: never, what: string): never {
  throw new RunnerError("internal", `unhandled ${what}: ${JSON.stringify(value)}`);
}
