// The facts a runner tells about its host, and the fingerprint that binds its credential to
// this machine. The fingerprint is a hash, so the machine id itself never leaves the host.
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import os from "node:os";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { HostFacts } from "../protocol/http.js";

const execFileAsync = promisify(execFile);

export function fingerprintOf(machineId: string): string {
  return createHash("sha256")
    .update("runner-host-v1\0" + machineId.trim())
    .digest("hex");
}

export async function readMachineId(): Promise<string> {
  try {
    if (process.platform === "linux") {
      for (const file of ["/etc/machine-id", "/var/lib/dbus/machine-id"]) {
        const id = (await fs.readFile(file, "utf8").catch(() => "")).trim();
        if (id) return id;
      }
    } else if (process.platform === "darwin") {
      // By absolute path: a service's PATH, or one an operator changed, must not decide which ioreg answers.
      const { stdout } = await execFileAsync("/usr/sbin/ioreg", ["-rd1", "-c", "IOPlatformExpertDevice"]);
      const match = /"IOPlatformUUID" = "([^"]+)"/.exec(stdout);
      if (match?.[1]) return match[1];
    } else if (process.platform === "win32") {
      const { stdout } = await execFileAsync("reg", [
        "query",
        "HKLM\\SOFTWARE\\Microsoft\\Cryptography",
        "/v",
        "MachineGuid",
      ]);
      const match = /MachineGuid\s+REG_SZ\s+(\S+)/.exec(stdout);
      if (match?.[1]) return match[1];
    }
  } catch {
    // fall through to the hostname
  }
  return os.hostname();
}

export async function gatherHostFacts(machineIdSetting: string | undefined): Promise<HostFacts> {
  const machineId = machineIdSetting ?? (await readMachineId());
  return {
    hostname: os.hostname(),
    platform: process.platform,
    arch: process.arch,
    fingerprint: fingerprintOf(machineId),
  };
}
