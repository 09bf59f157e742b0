// What every verb needs, built in one place from its options: the settings resolved
// (config/resolve.ts) and normalized into each part's config (config/normalize.ts), the state
// dir's files, a logger. Also the glue that gives a verb the flags of the settings it uses.
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Command, Option } from "commander";
import { ExitCode, RunnerError } from "../errors.js";
import { normalizeSettings, type RunnerConfig } from "../config/normalize.js";
import { defaultDirs } from "../config/paths.js";
import { resolveSettings, type ResolvedSettings } from "../config/resolve.js";
import { CONFIG_FILE_ENV, CONFIG_FILE_FLAG, SETTINGS, type SettingKey, type SettingSpec } from "../config/settings.js";
import { createLogger, type Logger } from "../log/logger.js";
import type { CheckContext } from "../startup/check.js";
import { gatherHostFacts } from "../state/host.js";
import { FALLBACK_OPEN_FILE_LIMIT, readOpenFileLimit } from "../workers/parent/rlimit.js";

/** A verb's view: the normalized config (every setting's value, each part's config), plus the verb's own things. */
export interface Context extends RunnerConfig {
  /** Where each setting came from (`runner service install` carries the flag and env ones into the unit). */
  resolved: ResolvedSettings;
  configFile: string;
  logger: Logger;
  now: () => Date;
}

/** Where the runner's state lives (and, with --system, its config): every verb that loads a context reads them. */
export const STATE_SETTINGS = ["stateDir", "system"] as const satisfies readonly SettingKey[];
/** How log lines look: the verbs that write any (the others print plain lines only). */
export const LOG_SETTINGS = ["logLevel", "logFormat"] as const satisfies readonly SettingKey[];
/**
 * How the runner reaches its control plane: every verb that sends it a request (register,
 * verify, repair, unregister, start), each under the same transport rule (--insecure-plaintext).
 */
export const CONTROL_PLANE_SETTINGS = [
  "requestTimeoutMs",
  "proxy",
  "insecurePlaintext",
] as const satisfies readonly SettingKey[];

/** Each verb's settings, as it declared them with withSettings (the unused-flag error and the tests read them). */
const declared = new WeakMap<Command, readonly SettingKey[]>();

/** The settings a verb declared (in the settings table's order), or undefined for a verb that takes none. */
export function declaredSettings(command: Command): readonly SettingKey[] | undefined {
  return declared.get(command);
}

/**
 * Adds the flags of the settings a verb uses (and --config) to it; help text and defaults come
 * from the table. The flag of any other setting is refused there with exit 2, saying which verbs
 * do use it: a flag that would be silently ignored is a mistake its author wants to hear about.
 * The same settings' environment variables and config-file keys are not refused, because the
 * environment and the config file are shared by every verb (the help footer says so).
 */
export function withSettings(command: Command, keys: readonly SettingKey[]): Command {
  command.addOption(
    new Option(`${CONFIG_FILE_FLAG} <file>`, `config file (env ${CONFIG_FILE_ENV}; default <config dir>/config.json)`),
  );
  const used = new Set(keys);
  for (const [key, spec] of Object.entries(SETTINGS) as [SettingKey, SettingSpec<unknown>][]) {
    if (!used.has(key)) {
      refuseUnused(command, key);
      continue;
    }
    const flags = spec.arg ? `${spec.flag} ${spec.arg}` : spec.flag;
    const shown = spec.defaultValue === undefined ? spec.defaultHelp : JSON.stringify(spec.defaultValue);
    command.addOption(new Option(flags, `${spec.help} (env ${spec.env}, config "${spec.key}"; default ${shown})`));
  }
  declared.set(
    command,
    (Object.keys(SETTINGS) as SettingKey[]).filter((key) => used.has(key)),
  );
  return command.addHelpText(
    "after",
    "\nEach setting can also come from its environment variable or config-file key, as\n" +
      "shown above; precedence: flag > environment > config file > default. The\n" +
      "variables and keys of settings this command does not use are ignored, not\n" +
      "refused: every command shares the environment and the config file.",
  );
}

/**
 * A hidden option, so that commander parses the flag (with or without a value) instead of
 * calling it unknown, and then refuses it naming the verbs that use it.
 */
function refuseUnused(command: Command, key: SettingKey): void {
  const flag = SETTINGS[key].flag;
  const option = new Option(`${flag} [value]`).hideHelp();
  command.addOption(option);
  command.on(`option:${option.name()}`, () => {
    const here = commandPath(command);
    const users = verbsUsing(command, key).map((verb) => `runner ${verb}`);
    const elsewhere = users.length === 0 ? "" : `; ${users.join(", ")} ${users.length === 1 ? "does" : "do"}`;
    command.error(
      `error: unknown option '${flag}' (runner ${here} does not use it${elsewhere}; see runner ${here} --help)`,
      { exitCode: ExitCode.USAGE, code: "runner.unusedSetting" },
    );
  });
}

/** "service install" for runner's `service install`. */
function commandPath(command: Command): string {
  const names: string[] = [];
  for (let at: Command | null = command; at?.parent; at = at.parent) names.unshift(at.name());
  return names.join(" ");
}

/** The verbs (as paths) that declared a setting, found from the program's root. */
function verbsUsing(command: Command, key: SettingKey): string[] {
  let root = command;
  while (root.parent) root = root.parent;
  const found: string[] = [];
  const visit = (at: Command) => {
    if (declared.get(at)?.includes(key)) found.push(commandPath(at));
    at.commands.forEach(visit);
  };
  visit(root);
  return found;
}

/**
 * `forDaemon`: the verb runs the worker pool (`start`), whose default fd limit is worked out from
 * RLIMIT_NOFILE. Only then is the limit read: on macOS that spawns a shell, which no other verb
 * should pay for (their pool config is never used).
 */
export async function loadContext(
  flags: Record<string, unknown>,
  env: NodeJS.ProcessEnv = process.env,
  options: { forDaemon?: boolean } = {},
): Promise<Context> {
  const explicitConfig = (flags.config as string | undefined) ?? (env[CONFIG_FILE_ENV] || undefined);
  // The config file's location may depend on --system, which may itself come from a flag or env.
  const early = resolveSettings({ flags, env });
  const dirs = defaultDirs({
    platform: process.platform,
    env,
    home: os.homedir(),
    system: early.settings.system,
  });
  const configFile = path.resolve(explicitConfig ?? path.join(dirs.configDir, "config.json"));
  const file = await readConfigFile(configFile, explicitConfig !== undefined);
  const resolved = resolveSettings({ flags, env, file, fileName: configFile });
  const config = normalizeSettings(resolved.settings, {
    platform: process.platform,
    env,
    home: os.homedir(),
    rlimitNofile: options.forDaemon ? await readOpenFileLimit() : FALLBACK_OPEN_FILE_LIMIT,
  });
  const logger = createLogger({ level: config.settings.logLevel, format: config.settings.logFormat });
  return { ...config, resolved, configFile, logger, now: () => new Date() };
}

async function readConfigFile(file: string, required: boolean): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT" && !required) return undefined;
    throw new RunnerError(
      "config_invalid",
      `cannot read the config file ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new RunnerError("config_invalid", `the config file ${file} is not valid JSON: ${(error as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new RunnerError("config_invalid", `the config file ${file} must hold a JSON object`);
  }
  return parsed as Record<string, unknown>;
}

/** What the verify/repair loop needs, from a verb's context. */
export async function checkContextFor(ctx: Context, registrationToken: string | undefined): Promise<CheckContext> {
  return {
    files: ctx.files,
    workDir: ctx.fitness.workDir,
    host: await gatherHostFacts(ctx.settings.machineId),
    requestTimeoutMs: ctx.controlPlane.requestTimeoutMs,
    proxy: ctx.controlPlane.proxy,
    insecurePlaintext: ctx.controlPlane.insecurePlaintext,
    registrationToken,
    now: ctx.now,
    logger: ctx.logger,
  };
}
