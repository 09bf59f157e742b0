import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Option, type Command } from "commander";
import { declaredSettings } from "../../src/cli/context.js";
import { SETTINGS, type SettingKey, type SettingSpec } from "../../src/config/settings.js";
import { resolveSettings } from "../../src/config/resolve.js";
import { buildProgram } from "../../src/program.js";
import { RunnerError } from "../../src/errors.js";
import { moduleJobSchema } from "../../src/protocol/channel.js";

const specs = Object.entries(SETTINGS) as [string, SettingSpec<unknown>][];

describe("every setting is declared completely", () => {
  for (const [key, spec] of specs) {
    test(`${key} has a flag, an env var, a config key, a default and help`, () => {
      assert.equal(spec.key, key);
      assert.match(spec.flag, /^--[a-z][a-z-]*$/);
      assert.match(spec.env, /^RUNNER_[A-Z_]+$/);
      assert.ok(spec.help.length > 15, "help says something");
      assert.ok(
        spec.defaultValue !== undefined || (spec.defaultHelp ?? "").length > 10,
        "a default, or help saying how it is worked out",
      );
      if (spec.defaultValue !== undefined)
        assert.ok(spec.schema.safeParse(spec.defaultValue).success, "the default passes its own schema");
    });
  }

  test("flags, env vars and config keys are all distinct", () => {
    for (const field of ["flag", "env", "key"] as const) {
      const values = specs.map(([, s]) => s[field]);
      assert.equal(new Set(values).size, values.length, `duplicate ${field}`);
    }
  });

  test("each flag parses to its setting's key (commander names a flag's value after the flag)", () => {
    for (const [name, spec] of specs) assert.equal(new Option(spec.flag).attributeName(), spec.key, name);
  });

  test("every setting is taken by some verb, and service install takes exactly start's (it carries them into the unit)", () => {
    const program = buildProgram();
    const verb = (...words: string[]) =>
      words.reduce<Command | undefined>((at, word) => at?.commands.find((c) => c.name() === word), program);
    const verbs: Command[] = [];
    const visit = (command: Command) =>
      command.commands.forEach((sub) => (sub.commands.length === 0 ? verbs.push(sub) : visit(sub)));
    visit(program);
    const taken = new Set(verbs.flatMap((command) => declaredSettings(command) ?? []));
    for (const [key] of specs) assert.ok(taken.has(key as SettingKey), `no verb takes ${key}`);
    assert.deepEqual(declaredSettings(verb("service", "install")!), declaredSettings(verb("start")!));
    assert.ok(!declaredSettings(verb("start")!)?.includes("credentialStore"), "the registration names the store");
  });
});

describe("settings precedence is flag > env > file > default", () => {
  test("a flag beats the env var, the file and the default", () => {
    const { settings, sources } = resolveSettings({
      flags: { logLevel: "debug" },
      env: { RUNNER_LOG_LEVEL: "warn" },
      file: { logLevel: "error" },
    });
    assert.equal(settings.logLevel, "debug");
    assert.equal(sources.logLevel, "flag");
  });

  test("the env var beats the file and the default", () => {
    const { settings, sources } = resolveSettings({
      flags: {},
      env: { RUNNER_LOG_LEVEL: "warn" },
      file: { logLevel: "error" },
    });
    assert.equal(settings.logLevel, "warn");
    assert.equal(sources.logLevel, "env");
  });

  test("the file beats the default", () => {
    const { settings, sources } = resolveSettings({ flags: {}, env: {}, file: { logLevel: "error" } });
    assert.equal(settings.logLevel, "error");
    assert.equal(sources.logLevel, "file");
  });

  test("with nothing given, each setting takes its default", () => {
    const { settings, sources } = resolveSettings({ flags: {}, env: {} });
    for (const [key, spec] of specs) {
      assert.equal(settings[key as keyof typeof settings], spec.defaultValue);
      assert.equal(sources[key as keyof typeof sources], "default");
    }
  });

  test("precedence holds for every setting, each with its own kind of value", () => {
    const samples: Record<string, [string, unknown]> = {
      stateDir: ["/from/env", "/from/file"],
      workDir: ["/work/from/env", "/work/from/file"],
      system: ["true", false],
      credentialStore: ["file", "keychain"],
      logLevel: ["warn", "error"],
      logFormat: ["json", "pretty"],
      machineId: ["env-id", "file-id"],
      requestTimeoutMs: ["2500", 4000],
      insecurePlaintext: ["1", false],
      proxy: ["http://proxy.example:3128", "off"],
      capacity: ["4", 2],
      drainTimeoutMs: ["1000", 2000],
      reconnectBaseMs: ["50", 100],
      reconnectCapMs: ["5000", 9000],
      workerMaxRssMb: ["512", 256],
      workerHardRssMb: ["off", 4096],
      workerMaxFds: ["300", 0],
      minFreeDiskMb: ["off", 2048],
      once: ["true", false],
      exitAfterIdle: ["30", 600],
      statusPort: ["off", 9464],
      workerMaxAgeS: ["60", 7200],
      workerMaxJobs: ["1", 100],
      handlers: ["build=/opt/handlers/build.mjs,lint=/opt/handlers/lint.mjs", { build: "/srv/build.mjs" }],
      deviceProviders: ["gpu, android", ["usb"]],
      deviceScanIntervalMs: ["30000", 120_000],
      deviceRefreshMs: ["60000", 3_600_000],
      deviceBatchSize: ["250", 50],
      deviceProviderTimeoutMs: ["2000", 30_000],
    };
    for (const [key, spec] of specs) {
      const sample = samples[key];
      assert.ok(sample, `add a sample for ${key}`);
      const [envValue, fileValue] = sample;
      const fromEnv = resolveSettings({ flags: {}, env: { [spec.env]: envValue }, file: { [key]: fileValue } });
      assert.equal(fromEnv.sources[key as keyof typeof fromEnv.sources], "env", key);
      assert.deepEqual(
        fromEnv.settings[key as keyof typeof fromEnv.settings],
        spec.schema.parse(spec.fromString(envValue)),
      );
      const fromFile = resolveSettings({ flags: {}, env: {}, file: { [key]: fileValue } });
      assert.deepEqual(fromFile.settings[key as keyof typeof fromFile.settings], fileValue, key);
    }
  });

  test("a bad value is refused with the source and the setting named", () => {
    assert.throws(
      () => resolveSettings({ flags: {}, env: { RUNNER_REQUEST_TIMEOUT_MS: "soon" } }),
      (e: unknown) =>
        e instanceof RunnerError && e.code === "config_invalid" && /RUNNER_REQUEST_TIMEOUT_MS/.test(e.message),
    );
    assert.throws(
      () =>
        resolveSettings({
          flags: {},
          env: {},
          file: { credentialStore: "vault" },
          fileName: "/etc/runner/config.json",
        }),
      (e: unknown) => e instanceof RunnerError && /\/etc\/runner\/config.json: "credentialStore"/.test(e.message),
    );
  });

  test(
    "a number setting given text says a whole number is expected, and off only where off is a word",
    { timeout: 10_000 },
    () => {
      const message = (inputs: Parameters<typeof resolveSettings>[0]) => {
        try {
          resolveSettings(inputs);
        } catch (error) {
          return (error as Error).message;
        }
        return "accepted";
      };
      assert.match(
        message({ flags: { capacity: "1.5" }, env: {} }),
        /--capacity: "1\.5" is not valid \(expected a whole number\)$/,
      );
      assert.match(
        message({ flags: {}, env: { RUNNER_WORKER_MAX_FDS: "many" } }),
        /\(expected a whole number, or off\)$/,
      );
      assert.match(
        message({ flags: {}, env: {}, file: { workerMaxFds: "off" }, fileName: "c.json" }),
        /c\.json: "workerMaxFds": "off" is not valid \(expected a whole number\)$/,
      );
    },
  );

  test(
    "an empty device provider list is refused (none is the word for none); an empty env var is unset",
    { timeout: 10_000 },
    () => {
      for (const raw of ["", " , "])
        assert.throws(
          () => resolveSettings({ flags: { deviceProviders: raw }, env: {} }),
          (e: unknown) =>
            e instanceof RunnerError &&
            /--device-providers: .* \(expected a comma-separated list, or none\)$/.test(e.message),
        );
      assert.deepEqual(resolveSettings({ flags: { deviceProviders: "none" }, env: {} }).settings.deviceProviders, []);
      assert.deepEqual(
        resolveSettings({ flags: {}, env: { RUNNER_DEVICE_PROVIDERS: "" } }).settings.deviceProviders,
        SETTINGS.deviceProviders.defaultValue,
      );
      assert.throws(
        () => resolveSettings({ flags: {}, env: {}, file: { deviceProviders: "usb" }, fileName: "c.json" }),
        (e: unknown) => e instanceof RunnerError && /\(expected a JSON array\)$/.test(e.message),
      );
    },
  );

  test("an unknown key in the config file is refused by name", () => {
    assert.throws(
      () => resolveSettings({ flags: {}, env: {}, file: { stateDirectory: "/x" }, fileName: "c.json" }),
      (e: unknown) => e instanceof RunnerError && /unknown key "stateDirectory"/.test(e.message),
    );
  });
});

test("the README's settings table lists every setting's flag, env var and key", async () => {
  const { readFile } = await import("node:fs/promises");
  const { REPO_ROOT } = await import("../helpers/cli.js");
  const readme = await readFile(`${REPO_ROOT}/README.md`, "utf8");
  for (const [key, spec] of specs) {
    const row = readme.split("\n").find((line) => line.includes(`\`${spec.env}\``));
    assert.ok(row, `README lacks ${spec.env}`);
    assert.ok(row.includes(`\`${spec.flag}`) && row.includes(`\`${key}\``), `README row for ${key} is incomplete`);
  }
});

test("a handler name the config accepts is one a job can ask for, and the other way round", () => {
  for (const name of ["build", "a.b_c-d", "x".repeat(128), "x".repeat(129), "a/b", "", "../up", "naïve"]) {
    const inConfig = SETTINGS.handlers.schema.safeParse({ [name]: "/opt/handler.mjs" }).success;
    const inJob = moduleJobSchema.safeParse({ kind: "module", handler: name, payload: null }).success;
    assert.equal(inConfig, inJob, JSON.stringify(name));
    assert.equal(inConfig, name.length <= 128 && /^[\w.-]+$/.test(name), JSON.stringify(name));
  }
});
