// The environment a job runs with: a minimal base taken from the runner's environment plus
// the job's own variables. Nothing else crosses over, so the runner's credential, settings
// (RUNNER_*), session bus address or any token in its environment never reach a job.

/** Variables a program commonly needs to run at all; the only ones a job inherits. */
const INHERITED = ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"] as const;
const INHERITED_ON_WINDOWS = ["SystemRoot", "ComSpec", "PATHEXT"] as const;

export function buildJobEnv(
  jobEnv: Record<string, string>,
  baseEnv: NodeJS.ProcessEnv,
  platform = process.platform,
): Record<string, string> {
  const names: readonly string[] = platform === "win32" ? [...INHERITED, ...INHERITED_ON_WINDOWS] : INHERITED;
  const env: Record<string, string> = {};
  for (const name of names) {
    const value = lookup(baseEnv, name, platform === "win32");
    if (value !== undefined) env[name] = value;
  }
  return { ...env, ...jobEnv };
}

/** Windows variable names are case-insensitive ("Path"), and a copied env object loses that. */
function lookup(env: NodeJS.ProcessEnv, name: string, caseInsensitive: boolean): string | undefined {
  const exact = env[name];
  if (exact !== undefined || !caseInsensitive) return exact;
  const key = Object.keys(env).find((k) => k.toUpperCase() === name.toUpperCase());
  return key === undefined ? undefined : env[key];
}
