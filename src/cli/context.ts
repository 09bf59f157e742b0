// What every verb needs, built in one place from its options: the settings resolved
// (config/resolve.ts) and normalized into each part's config (config/normalize.ts), the state
// dir's files, a logger. Also the glue that adds every setting's flag to a verb.
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Command, Option } from "commander";
import { RunnerError } from "../errors.js";
import { normalizeSettings, type RunnerConfig } from "../config/normalize.js";
import { defaultDirs } from "../config/paths.js";
import { resolveSettings, type ResolvedSettings } from "../config/resolve.js";
import { CONFIG_FILE_ENV, CONFIG_FILE_FLAG, SETTINGS, type SettingSpec } from "../config/settings.js";
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

/** Adds every setting's flag (and --config) to a verb. Help text and defaults come from the table. */
export function withSettings(command: Command): Command {
  command.addOption(
    new Option(`${CONFIG_FILE_FLAG} <file>`, `config file (env ${CONFIG_FILE_ENV}; default <config dir>/config.json)`),
  );
  for (const spec of Object.values(SETTINGS) as SettingSpec<unknown>[]) {
    const flags = spec.arg ? `${spec.flag} ${spec.arg}` : spec.flag;
    const shown = spec.defaultValue === undefined ? spec.defaultHelp : JSON.stringify(spec.defaultValue);
    command.addOption(new Option(flags, `${spec.help} (env ${spec.env}, config "${spec.key}"; default ${shown})`));
  }
  return command;
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
    registrationToken,
    now: ctx.now,
    logger: ctx.logger,
  };
}
