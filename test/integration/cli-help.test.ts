// Each verb's help and the settings it takes. The help of the real CLI (a child process) lists
// exactly the settings the verb declared; the flag of any other setting is refused with exit 2
// and a message naming the verbs that do use it, while its environment variable and config key
// are not; every example in a verb's help parses against the real program; and the README's
// table of the settings each verb takes says what the code does.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { CommanderError, type Command } from "commander";
import { REPO_ROOT, runCli } from "../helpers/cli.js";
import { tempDir } from "../helpers/fixtures.js";
import { declaredSettings } from "../../src/cli/context.js";
import { EXAMPLES_HEADING } from "../../src/cli/examples.js";
import { CONFIG_FILE_FLAG, SETTINGS, type SettingKey } from "../../src/config/settings.js";
import { ExitCode, NO_RESTART_EXITS } from "../../src/errors.js";
import { buildProgram } from "../../src/program.js";

const SETTING_FLAGS = new Set(Object.values(SETTINGS).map((spec) => spec.flag));
const flagOf = (key: SettingKey) => SETTINGS[key].flag;

interface Verb {
  /** e.g. ["service", "install"]. */
  path: string[];
  command: Command;
}

/** Every command that runs something (not `service` or `credentials`, which only group their sub-verbs). */
function verbsOf(program: Command): Verb[] {
  const found: Verb[] = [];
  const visit = (command: Command, at: string[]) => {
    for (const sub of command.commands) {
      const here = [...at, sub.name()];
      if (sub.commands.length === 0) found.push({ path: here, command: sub });
      else visit(sub, here);
    }
  };
  visit(program, []);
  return found;
}

/**
 * The program with every action replaced by one that only records which verb it was, every
 * error thrown instead of exiting, and output captured: parsing a command line runs nothing.
 */
function parsingOnly(): { program: Command; ran: () => Command | undefined } {
  const program = buildProgram();
  let ran: Command | undefined;
  const quiet = (command: Command) => {
    command.exitOverride().configureOutput({ writeOut: () => undefined, writeErr: () => undefined });
    command.commands.forEach(quiet);
  };
  quiet(program);
  for (const verb of verbsOf(program)) verb.command.action(() => void (ran = verb.command));
  return { program, ran: () => ran };
}

/** The long flags a help text's Options section lists. */
function optionsListed(help: string): string[] {
  const section = help.split("\nOptions:\n")[1]?.split("\n\n")[0] ?? "";
  return [...section.matchAll(/^ {2}(?:-\w, )?(--[a-z][a-z-]*)/gm)].map((match) => match[1]!);
}

/** The examples under the heading: each a comment line, then the command line. */
function examplesIn(help: string): { says: string; line: string }[] {
  const block = help.split(`\n${EXAMPLES_HEADING}\n`)[1]?.split("\n\n")[0] ?? "";
  const lines = block.split("\n").filter((line) => line.trim() !== "");
  const examples: { says: string; line: string }[] = [];
  for (let i = 0; i + 1 < lines.length; i += 2) {
    assert.match(lines[i]!, /^ {2}# \S/, `a comment first: ${lines[i]}`);
    examples.push({ says: lines[i]!.slice(4), line: lines[i + 1]!.trim() });
  }
  assert.equal(examples.length * 2, lines.length, `every example is a comment and a line:\n${block}`);
  return examples;
}

/** An example's words after `runner` (or `sudo runner`); the examples use no quotes, pipes or redirections. */
function argvOf(line: string): string[] {
  assert.doesNotMatch(line, /["'`|<>;&$\\]/, `a plain command line: ${line}`);
  const words = line.split(/\s+/);
  if (words[0] === "sudo") words.shift();
  assert.equal(words[0], "runner", line);
  return words.slice(1);
}

describe("each verb's help", () => {
  test(
    "the real CLI's help for each verb lists exactly the settings it declared, --config with them, and examples",
    { timeout: 120_000 },
    async () => {
      const verbs = verbsOf(buildProgram());
      assert.ok(verbs.length >= 11, verbs.map((v) => v.path.join(" ")).join(", "));
      // A few at a time: each is a node process on a machine shared with other test files.
      for (let i = 0; i < verbs.length; i += 3) {
        await Promise.all(
          verbs.slice(i, i + 3).map(async ({ path: words, command }) => {
            const name = words.join(" ");
            const result = await runCli([...words, "--help"]);
            assert.equal(result.code, ExitCode.OK, result.all);
            const listed = optionsListed(result.stdout);
            const declared = declaredSettings(command);
            assert.deepEqual(
              listed.filter((flag) => SETTING_FLAGS.has(flag)).sort(),
              (declared ?? []).map(flagOf).sort(),
              `runner ${name} --help`,
            );
            assert.equal(
              listed.includes(CONFIG_FILE_FLAG),
              declared !== undefined,
              `${name}: --config with its settings`,
            );
            if (declared !== undefined)
              assert.match(
                result.stdout,
                /ignored, not\nrefused: every command shares the environment and the config file/,
              );
            const examples = examplesIn(result.stdout);
            assert.ok(examples.length >= 1 && examples.length <= 3, `${name}: 1-3 examples, not ${examples.length}`);
            assert.ok((command.summary() || command.description()).length > 10, `${name} says what it does`);
          }),
        );
      }
    },
  );

  test("every example in a verb's help parses, as that verb, against the real program", { timeout: 120_000 }, () => {
    let count = 0;
    for (const { path: words, command } of verbsOf(buildProgram())) {
      let text = "";
      command.configureOutput({ writeOut: (s) => (text += s) }).outputHelp();
      for (const example of examplesIn(text)) {
        const fresh = parsingOnly();
        try {
          fresh.program.parse(argvOf(example.line), { from: "user" });
        } catch (error) {
          assert.fail(`runner ${words.join(" ")}'s example does not parse: ${example.line}\n${String(error)}`);
        }
        assert.equal(fresh.ran()?.name(), command.name(), `${example.line} runs ${words.join(" ")}`);
        count += 1;
      }
    }
    assert.ok(count >= 20, `${count} examples`);
  });

  test("runner --help is a clean list of the verbs, without any setting", { timeout: 120_000 }, async () => {
    const result = await runCli(["--help"]);
    assert.equal(result.code, ExitCode.OK, result.all);
    assert.deepEqual(
      optionsListed(result.stdout).filter((flag) => SETTING_FLAGS.has(flag) || flag === CONFIG_FILE_FLAG),
      [],
    );
    for (const verb of buildProgram().commands) assert.match(result.stdout, new RegExp(`^ {2}${verb.name()} `, "m"));
    // Every exit code of the README's table, 77 (a refused registration token) included.
    for (const code of [0, 1, 2, 3, 4, 69, 77, 78, 79]) assert.match(result.stdout, new RegExp(`\\b${code} [a-z]`));
  });

  test(
    "service --help and the README name every exit the service units never restart, as the units do",
    { timeout: 120_000 },
    async () => {
      const result = await runCli(["service", "--help"]);
      assert.equal(result.code, ExitCode.OK, result.all);
      assert.ok(result.stdout.replace(/\s+/g, " ").includes(`(${NO_RESTART_EXITS.join(", ")})`), result.stdout);
      const readme = (await fs.readFile(path.join(REPO_ROOT, "README.md"), "utf8")).replace(/\s+/g, " ");
      const listed = `${NO_RESTART_EXITS.slice(0, -1).join(", ")} or ${NO_RESTART_EXITS.at(-1)}`;
      assert.ok(readme.includes(`neither service unit restarts \`start\` after ${listed}`), "README: exit codes");
      assert.ok(readme.includes(`never after exit ${listed}`), "README: Running as a service");
    },
  );
});

describe("a setting's flag on a verb that does not use it", () => {
  test("is refused on every verb with exit 2, naming the verbs that do use it", { timeout: 60_000 }, () => {
    const program = buildProgram();
    const users = (key: SettingKey) =>
      verbsOf(program)
        .filter((verb) => declaredSettings(verb.command)?.includes(key))
        .map((verb) => `runner ${verb.path.join(" ")}`);
    let refused = 0;
    for (const { path: words, command } of verbsOf(program)) {
      const declared = declaredSettings(command);
      for (const key of Object.keys(SETTINGS) as SettingKey[]) {
        if (declared?.includes(key)) continue;
        const { program: fresh, ran } = parsingOnly();
        const flag = flagOf(key);
        const name = words.join(" ");
        assert.throws(
          () => fresh.parse([...words, flag, "1"], { from: "user" }),
          (error: unknown) => {
            assert.ok(error instanceof CommanderError, String(error));
            if (declared === undefined) {
              // control-plane takes none of the runner's settings: commander's own refusal.
              assert.equal(error.code, "commander.unknownOption", `${name} ${flag}`);
              return true;
            }
            assert.equal(error.exitCode, ExitCode.USAGE);
            const elsewhere = users(key);
            assert.equal(
              error.message,
              `error: unknown option '${flag}' (runner ${name} does not use it` +
                (elsewhere.length === 0 ? "" : `; ${elsewhere.join(", ")} ${elsewhere.length === 1 ? "does" : "do"}`) +
                `; see runner ${name} --help)`,
            );
            return true;
          },
          `runner ${name} ${flag}`,
        );
        assert.equal(ran(), undefined, "nothing ran");
        refused += 1;
      }
    }
    assert.ok(refused > 50, `${refused} refusals checked`);
  });

  test(
    "the real CLI exits 2 with the message and a one-line hint, and runs nothing",
    { timeout: 60_000 },
    async (t) => {
      const dir = await tempDir(t);
      const stateDir = path.join(dir, "state");
      const result = await runCli(["status", "--state-dir", stateDir, "--capacity", "5"]);
      assert.equal(result.code, ExitCode.USAGE, result.all);
      assert.equal(result.stdout, "");
      assert.equal(
        result.stderr,
        "error: unknown option '--capacity' (runner status does not use it; runner start, runner service install do; " +
          "see runner status --help)\n(add --help for the command's options and examples)\n",
      );
      const boolean = await runCli(["unregister", "--state-dir", stateDir, "--once"]);
      assert.equal(boolean.code, ExitCode.USAGE, boolean.all);
      assert.match(boolean.stderr, /^error: unknown option '--once' \(runner unregister does not use it; runner start/);
      await assert.rejects(fs.access(stateDir), { code: "ENOENT" });
    },
  );

  test(
    "its environment variable and config-file key are not refused: every verb shares them",
    { timeout: 60_000 },
    async (t) => {
      const dir = await tempDir(t);
      const configFile = path.join(dir, "config.json");
      await fs.writeFile(configFile, JSON.stringify({ capacity: 4, credentialStore: "file", deviceBatchSize: 50 }));
      const result = await runCli(["status", "--json", "--config", configFile, "--state-dir", path.join(dir, "s")], {
        env: { RUNNER_CAPACITY: "3", RUNNER_ONCE: "1", RUNNER_WORKER_MAX_JOBS: "1" },
      });
      assert.equal(result.code, ExitCode.OK, result.all);
      assert.equal((JSON.parse(result.stdout) as { registered: boolean }).registered, false);
    },
  );
});

test("the README's table of the settings each verb takes matches the code", { timeout: 30_000 }, async () => {
  const readme = await fs.readFile(path.join(REPO_ROOT, "README.md"), "utf8");
  for (const { path: words, command } of verbsOf(buildProgram())) {
    const declared = declaredSettings(command);
    if (declared === undefined) continue;
    const row = readme.split("\n").find((line) => line.startsWith(`| \`${words.join(" ")}\` | `));
    assert.ok(row, `README has a settings row for ${words.join(" ")}`);
    const cell = row.split(" | ")[1] ?? "";
    // service install's row says it takes start's settings rather than listing them again.
    const sameAs = /^the same as `([a-z ]+)`/.exec(cell)?.[1];
    const flags = sameAs
      ? [
          ...(readme.split("\n").find((line) => line.startsWith(`| \`${sameAs}\` | `)) ?? "").matchAll(/`(--[a-z-]+)/g),
        ].map((m) => m[1]!)
      : [...cell.matchAll(/`(--[a-z-]+)/g)].map((m) => m[1]!);
    assert.deepEqual(
      flags.filter((flag) => flag !== CONFIG_FILE_FLAG).sort(),
      declared.map(flagOf).sort(),
      `README row for ${words.join(" ")}`,
    );
  }
});
