// The program: one commander program assembled from one file per verb in src/commands (src/cli holds
// only the helpers those verbs share).
import { Command, CommanderError } from "commander";
import { ExitCode } from "./errors.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "./protocol/version.js";
import { createLogger } from "./log/logger.js";
import { defineControlPlaneCommand } from "./commands/control-plane.js";
import { defineCredentialsCommand } from "./commands/credentials.js";
import { defineDevicesCommand } from "./commands/devices.js";
import { defineRegisterCommand } from "./commands/register.js";
import { defineRepairCommand } from "./commands/repair.js";
import { defineServiceCommand } from "./commands/service.js";
import { defineStartCommand, stopForUsageError } from "./commands/start.js";
import { defineStatusCommand } from "./commands/status.js";
import { defineUnregisterCommand } from "./commands/unregister.js";
import { defineVerifyCommand } from "./commands/verify.js";

/** What `runner --version` prints: enough to file a bug or to check a fleet's mix of versions. */
export function versionText(): string {
  return `runner ${AGENT_VERSION} (protocol ${PROTOCOL_VERSION}; Node.js ${process.versions.node}; ${process.platform}-${process.arch})`;
}

export function buildProgram(): Command {
  const program = new Command("runner")
    .description("A runner agent: takes jobs from a control plane over one WebSocket and runs them on this machine.")
    .version(versionText(), "-V, --version", "print the agent, protocol and Node.js versions and the platform")
    // One line, not the whole help: the error stays in view (a verb's help runs to pages).
    .showHelpAfterError("(add --help for the command's options and examples)")
    .exitOverride();
  program.addHelpText(
    "after",
    `
Exit codes: ${ExitCode.OK} ok, ${ExitCode.INTERNAL} unexpected error, ${ExitCode.USAGE} usage or config error, ${ExitCode.UNHEALTHY} verify found problems,
${ExitCode.ALREADY_RUNNING} another runner holds the lock, ${ExitCode.UNAVAILABLE} control plane unreachable (try later),
${ExitCode.TOKEN_REFUSED} registration token refused, ${ExitCode.NEEDS_OPERATOR} needs an operator (do not restart), ${ExitCode.UPGRADE_REQUIRED} upgrade required.`,
  );
  defineRegisterCommand(program);
  defineVerifyCommand(program);
  defineRepairCommand(program);
  defineUnregisterCommand(program);
  defineStatusCommand(program);
  defineStartCommand(program);
  defineServiceCommand(program);
  defineDevicesCommand(program);
  defineCredentialsCommand(program);
  defineControlPlaneCommand(program, { logger: () => createLogger({ name: "control-plane" }) });
  // Subcommands inherit exitOverride only if set before they are added; set it on each too.
  for (const command of program.commands) command.exitOverride();
  return program;
}

/**
 * The first long option given more than once, or null. Commander would keep the last value
 * silently; two values for one option are a mistake (a copied line, an edited unit) whose
 * author should hear which one would have counted. Stops at `--`.
 */
export function repeatedOption(argv: readonly string[]): string | null {
  const seen = new Set<string>();
  for (const arg of argv) {
    if (arg === "--") break;
    const flag = /^(--[a-z][a-z0-9-]*)(?:=|$)/.exec(arg)?.[1];
    if (flag === undefined || flag === "--help") continue;
    if (seen.has(flag)) return flag;
    seen.add(flag);
  }
  return null;
}

export async function main(argv: string[]): Promise<number> {
  process.exitCode = undefined;
  const repeated = repeatedOption(argv);
  if (repeated !== null) {
    const message = `error: option '${repeated}' given more than once: give each option once`;
    process.stderr.write(`${message}\n(add --help for the command's options and examples)\n`);
    if (argv[0] === "start") await stopForUsageError(message);
    return ExitCode.USAGE;
  }
  try {
    await buildProgram().parseAsync(argv, { from: "user" });
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.exitCode === 0) return ExitCode.OK;
      if (argv[0] === "start") await stopForUsageError(error.message);
      return ExitCode.USAGE;
    }
    throw error;
  }
  return typeof process.exitCode === "number" ? process.exitCode : ExitCode.OK;
}
