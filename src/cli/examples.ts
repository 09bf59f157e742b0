// A verb's examples at the end of its --help: each a real command line with a comment above it
// saying what it does. One format for every verb, so that a test can pull them out of the help
// text and parse each one against the real program (test/integration/cli-help.test.ts).
import type { Command } from "commander";

export interface Example {
  /** What it does, one line. */
  says: string;
  /** The command line, starting with `runner` (or `sudo runner`); no pipes or redirections. */
  line: string;
}

/** The heading the examples follow in a verb's help. */
export const EXAMPLES_HEADING = "Examples:";

export function withExamples(command: Command, examples: readonly Example[]): Command {
  const body = examples.map((example) => `  # ${example.says}\n  ${example.line}`).join("\n");
  return command.addHelpText("after", `\n${EXAMPLES_HEADING}\n${body}`);
}
