// The one shape of a log line that a sans-IO core asks for (the channel machine, the device
// sync), and the one way its driver writes it: cores stay free of the logger, and both
// drivers log the same way.
import type { Logger } from "./logger.js";

export type LogEffectLevel = "debug" | "info" | "warn" | "error";

export interface LogEffect {
  type: "log";
  level: LogEffectLevel;
  message: string;
  fields?: Record<string, unknown>;
}

export function logEffect(level: LogEffectLevel, message: string, fields?: Record<string, unknown>): LogEffect {
  return fields ? { type: "log", level, message, fields } : { type: "log", level, message };
}

/** What a driver does with a core's log effect. */
export function performLog(logger: Logger, effect: LogEffect): void {
  logger[effect.level](effect.fields ?? {}, effect.message);
}
