// Resolves every setting from its four sources, in order flag > env > file > default. Pure:
// the caller passes the parsed flags, the environment and the parsed config file.
import type { z } from "zod";
import { RunnerError } from "../errors.js";
import { SETTINGS, type SettingKey, type Settings, type SettingSource, type SettingSpec } from "./settings.js";

export interface SettingInputs {
  /** Commander's parsed options (keys are the settings' keys). */
  flags: Record<string, unknown>;
  env: Record<string, string | undefined>;
  /** The parsed config file, if there is one. */
  file?: Record<string, unknown>;
  /** Named in errors about file values. */
  fileName?: string;
}

export interface ResolvedSettings {
  settings: Settings;
  sources: Record<SettingKey, SettingSource>;
}

const KEYS = Object.keys(SETTINGS) as SettingKey[];

export function resolveSettings(inputs: SettingInputs): ResolvedSettings {
  const file = inputs.file ?? {};
  const unknownKeys = Object.keys(file).filter((k) => !(k in SETTINGS));
  if (unknownKeys.length > 0) {
    throw new RunnerError(
      "config_invalid",
      `${inputs.fileName ?? "config file"}: unknown key ${unknownKeys.map((k) => `"${k}"`).join(", ")}`,
      {
        hint: `known keys: ${KEYS.join(", ")}`,
      },
    );
  }
  const settings = {} as Record<SettingKey, unknown>;
  const sources = {} as Record<SettingKey, SettingSource>;
  for (const key of KEYS) {
    const spec = SETTINGS[key] as SettingSpec<unknown>;
    const flag = inputs.flags[key];
    const env = inputs.env[spec.env];
    if (flag !== undefined) {
      settings[key] = check(spec, typeof flag === "string" ? spec.fromString(flag) : flag, `${spec.flag}`, true);
      sources[key] = "flag";
    } else if (env !== undefined && env !== "") {
      settings[key] = check(spec, spec.fromString(env), `$${spec.env}`, true);
      sources[key] = "env";
    } else if (file[key] !== undefined) {
      settings[key] = check(spec, file[key], `${inputs.fileName ?? "config file"}: "${key}"`);
      sources[key] = "file";
    } else {
      settings[key] = spec.defaultValue;
      sources[key] = "default";
    }
  }
  return { settings: settings as Settings, sources };
}

/** `fromText`: a flag or env var, where "off" is a word for 0; a config file takes JSON numbers only. */
function check(spec: SettingSpec<unknown>, value: unknown, where: string, fromText = false): unknown {
  const result = spec.schema.safeParse(value);
  if (result.success) return result.data;
  const problem = result.error.issues.map((i) => describeIssue(spec, i, fromText)).join("; ");
  // A secret (a proxy URL with its password) is named, never repeated.
  const shown = spec.secret ? "the value" : JSON.stringify(value);
  throw new RunnerError("config_invalid", `${where}: ${shown} is not valid (${problem})`, {
    hint: `${spec.flag}: ${spec.help}`,
  });
}

/**
 * zod's words for a number setting given text ("Expected number, received string") say what the
 * parser saw, not what to type: say that.
 */
function describeIssue(spec: SettingSpec<unknown>, issue: z.ZodIssue, fromText: boolean): string {
  if (issue.code === "invalid_type" && issue.expected === "number" && issue.received === "string")
    return fromText && spec.arg?.includes("|off") ? "expected a whole number, or off" : "expected a whole number";
  if (issue.code === "invalid_type" && issue.expected === "array" && issue.received === "string")
    return fromText ? "expected a comma-separated list, or none" : "expected a JSON array";
  return issue.message;
}

/** Every setting at its default, as if nothing were given (tests and benchmarks build a part's config from it). */
export function defaultSettings(): Settings {
  return resolveSettings({ flags: {}, env: {} }).settings;
}
