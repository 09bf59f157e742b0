// runner devices: scans this machine's devices now, with the providers the settings enable,
// and prints them (a table, or JSON). --rescan also asks the running daemon (the pid in the
// state dir's lock) to rescan at once, with SIGUSR2, so the control plane hears of a change
// without waiting for the next scan.
import { Command } from "commander";
import { ExitCode } from "../errors.js";
import { loadContext, STATE_SETTINGS, withSettings } from "../cli/context.js";
import { withExamples } from "../cli/examples.js";
import { action, print, printJson } from "../cli/output.js";
import { createProviders, scanDevices, type Device, type ProviderReport } from "../devices/index.js";
import { inspectLock } from "../state/lock.js";

type RescanOutcome = { sent: true; pid: number } | { sent: false; reason: string };

export function defineDevicesCommand(program: Command): void {
  const command = program
    .command("devices")
    .summary("list this machine's devices (scanned now); --rescan also makes the running daemon rescan and sync")
    .option("--json", "print as JSON")
    .option("--rescan", "also signal the running daemon (SIGUSR2) to rescan at once");
  // The state dir only to find the daemon's lock for --rescan.
  withSettings(command, [...STATE_SETTINGS, "deviceProviders", "deviceProviderTimeoutMs"]);
  withExamples(command, [
    { says: "scan with every provider the settings enable, and print a table", line: "runner devices" },
    { says: "only USB and Android devices, as JSON", line: "runner devices --device-providers usb,android --json" },
    {
      says: "after plugging in a device: tell the running daemon to rescan and sync now",
      line: "runner devices --rescan",
    },
  ]);
  command.action(
    action(async (options: Record<string, unknown>) => {
      const ctx = await loadContext(options);
      const { deviceProviders, deviceProviderTimeoutMs } = ctx.deviceSync;
      const scan = await scanDevices(createProviders(deviceProviders), { timeoutMs: deviceProviderTimeoutMs });
      const rescan = options.rescan ? await signalDaemon(ctx.files.lock, ctx.files.stateDir) : null;
      if (options.json) {
        printJson({ devices: scan.devices, providers: scan.reports, scanMs: scan.ms, rescan });
        return ExitCode.OK;
      }
      printTable(scan.devices);
      print();
      print(`scanned in ${scan.ms} ms: ${scan.reports.map(describeReport).join(", ") || "no providers enabled"}`);
      if (rescan?.sent) print(`asked the running daemon (pid ${rescan.pid}) to rescan and sync its devices`);
      else if (rescan) process.stderr.write(`runner: not signalled: ${rescan.reason}\n`);
      return ExitCode.OK;
    }),
  );
}

async function signalDaemon(lockFile: string, stateDir: string): Promise<RescanOutcome> {
  if (process.platform === "win32")
    return { sent: false, reason: "Windows has no SIGUSR2; restart the runner to rescan" };
  const lock = await inspectLock(lockFile);
  if (lock.kind !== "held") {
    const why = lock.kind === "stale" ? ` (its lock is stale: ${lock.reason})` : "";
    return { sent: false, reason: `no runner daemon is running for the state dir ${stateDir}${why}` };
  }
  try {
    process.kill(lock.owner.pid, "SIGUSR2");
    return { sent: true, pid: lock.owner.pid };
  } catch (error) {
    return {
      sent: false,
      reason: `could not signal pid ${lock.owner.pid}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
    };
  }
}

function printTable(devices: readonly Device[]): void {
  if (devices.length === 0) {
    print("no devices found");
    return;
  }
  const rows = devices.map((d) => [d.kind, d.id, d.name, d.stale ? `${d.state} (stale)` : d.state]);
  const header = ["KIND", "ID", "NAME", "STATE"];
  const widths = header.map((h, i) => Math.min(48, Math.max(h.length, ...rows.map((r) => r[i]!.length))));
  const line = (cells: string[]) =>
    cells.map((cell, i) => (i === cells.length - 1 ? cell : fit(cell, widths[i]!))).join("  ");
  print(line(header));
  for (const row of rows) print(line(row));
}

function fit(text: string, width: number): string {
  return text.length > width ? text.slice(0, width - 1) + "…" : text.padEnd(width);
}

function describeReport(report: ProviderReport): string {
  return report.ok ? `${report.name} ${report.rows} in ${report.ms} ms` : `${report.name} FAILED (${report.error})`;
}
