// runner register: exchange a one-time registration token for this runner's identity.
import os from "node:os";
import { Command, Option } from "commander";
import { RunnerError, ExitCode } from "../errors.js";
import { checkControlPlaneUrl } from "../config/transport.js";
import { chooseStore, openStore } from "../credentials/select.js";
import { labelsSchema } from "../protocol/http.js";
import { DIR_MODE, ensureDir } from "../state/files.js";
import { gatherHostFacts } from "../state/host.js";
import { acquireLock } from "../state/lock.js";
import { readRegistration } from "../state/registration.js";
import { enroll } from "../startup/enroll.js";
import { CONTROL_PLANE_SETTINGS, LOG_SETTINGS, loadContext, STATE_SETTINGS, withSettings } from "../cli/context.js";
import { withExamples } from "../cli/examples.js";
import type { SettingKey } from "../config/settings.js";
import { action, print } from "../cli/output.js";
import { readToken, readTokenFromStdin } from "../cli/token-input.js";
import { promises as fs } from "node:fs";

interface RegisterOptions {
  url: string;
  token?: string;
  tokenFile?: string;
  name?: string;
  labels?: string;
  replace?: boolean;
  [setting: string]: unknown;
}

/** The settings register reads: where the credential goes, the host's identity, and the control plane's URL rule. */
const REGISTER_SETTINGS: readonly SettingKey[] = [
  ...STATE_SETTINGS,
  ...LOG_SETTINGS,
  ...CONTROL_PLANE_SETTINGS,
  "credentialStore",
  "machineId",
];

export function defineRegisterCommand(program: Command): void {
  const command = program
    .command("register")
    .summary("register this machine with a control plane")
    .description(
      "Exchanges a one-time registration token for a runner id and a credential. The credential goes to the OS keychain when " +
        "one works, else to a 0600 file in the state dir. The token is read from --token-file, or from standard input when " +
        "neither --token nor --token-file is given (--token works but is visible to other users in the process list).",
    )
    .requiredOption("--url <url>", "the control plane, e.g. https://cp.example.com")
    .option("--token <token>", "the registration token (prefer --token-file or stdin)")
    .option("--token-file <file>", "read the registration token from this file")
    .option("--name <name>", "the runner's name (default: this host's name)")
    .option("--labels <a,b>", "comma-separated labels that jobs can require")
    .addOption(new Option("--replace", "replace an existing registration (here and on the control plane)"));
  withSettings(command, REGISTER_SETTINGS);
  withExamples(command, [
    {
      says: "register with the token in a file, naming the runner and the labels jobs can require",
      line: "runner register --url https://cp.example.com --token-file token.txt --name mac-mini-07 --labels macos,arm64",
    },
    {
      says: "register for a machine-wide service, keeping the credential in a 0600 file (no keychain at boot)",
      line: "sudo runner register --system --credential-store file --url https://cp.example.com --token-file token.txt",
    },
    {
      says: "take over this state dir's registration (and the name on the control plane) with a new token",
      line: "runner register --replace --url https://cp.example.com --token-file token.txt",
    },
  ]);
  command.action(action((options: RegisterOptions) => runRegister(options)));
}

async function runRegister(options: RegisterOptions): Promise<number> {
  const ctx = await loadContext(options);
  const url = checkControlPlaneUrl(options.url, ctx.controlPlane.insecurePlaintext);
  const labels = parseLabels(options.labels);
  const name =
    options.name ??
    (os
      .hostname()
      .replace(/[^A-Za-z0-9._-]/g, "-")
      .replace(/^[^A-Za-z0-9]+/, "") ||
      "runner");
  const token = (await readToken(options)) ?? (await readTokenFromStdin());
  if (!token) {
    throw new RunnerError("usage", "no registration token given", {
      hint: "pass --token-file FILE, or pipe the token on standard input",
    });
  }

  await ensureDir(ctx.files.stateDir, { followLink: true });
  await fs.chmod(ctx.files.stateDir, DIR_MODE);
  await ensureDir(ctx.files.outbox);
  const lock = await acquireLock(ctx.files.lock);
  try {
    const existing = await readRegistration(ctx.files.registration);
    if (existing.kind === "ok" && !options.replace) {
      throw new RunnerError(
        "already_registered",
        `this state dir already holds runner ${existing.value.runnerId} (${existing.value.name}) at ${existing.value.url}`,
        {
          hint: "pass --replace to register again, or run `runner unregister` first",
        },
      );
    }
    const choice = await chooseStore(ctx.settings.credentialStore, ctx.files);
    ctx.logger.info({ store: choice.store.kind }, choice.why);
    const registration = await enroll({
      url,
      registrationToken: token,
      name,
      labels,
      replace: options.replace === true,
      store: choice.store,
      files: ctx.files,
      host: await gatherHostFacts(ctx.settings.machineId),
      timeoutMs: ctx.controlPlane.requestTimeoutMs,
      proxy: ctx.controlPlane.proxy,
      insecurePlaintext: ctx.controlPlane.insecurePlaintext,
      now: ctx.now(),
    });
    if (existing.kind === "ok" && existing.value.credentialStore !== choice.store.kind) {
      await openStore(existing.value.credentialStore, ctx.files)
        .remove()
        .catch(() => false);
    }
    print(`registered runner ${registration.runnerId} (${registration.name}) with ${url}`);
    print(`  labels: ${registration.labels.join(", ") || "(none)"}`);
    print(`  credential: ${choice.store.location}`);
    print(`  state dir: ${ctx.files.stateDir}`);
    // A machine-wide service runs as another user, who could not read a state dir of root's.
    if (ctx.settings.system && process.getuid?.() === 0)
      print(
        `  the state dir belongs to root: \`sudo runner service install --system --run-as <user>\` gives it to the user the service runs as`,
      );
    return ExitCode.OK;
  } finally {
    await lock.release();
  }
}

function parseLabels(raw: string | undefined): string[] {
  if (raw === undefined || raw.trim() === "") return [];
  const labels = raw
    .split(",")
    .map((l) => l.trim())
    .filter((l) => l !== "");
  const result = labelsSchema.safeParse(labels);
  if (!result.success)
    throw new RunnerError("usage", `--labels: ${result.error.issues.map((i) => i.message).join("; ")}`);
  return result.data;
}
