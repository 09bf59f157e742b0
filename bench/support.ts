// Shared bits of the benchmarks: percentiles, a table printer, and the CLI path.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const RUNNER_BIN = path.join(REPO_ROOT, "bin", "runner.js");

export interface Percentiles {
  n: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

export function percentiles(values: number[]): Percentiles {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? NaN;
  return { n: sorted.length, p50: at(0.5), p95: at(0.95), p99: at(0.99), max: sorted[sorted.length - 1] ?? NaN };
}

export function printTable(title: string, rows: [string, Percentiles][]): void {
  const fmt = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(3));
  const width = Math.max(...rows.map(([label]) => label.length));
  console.log(`\n${title}`);
  console.log(`${"".padEnd(width)}  ${["n", "p50", "p95", "p99", "max"].map((h) => h.padStart(9)).join("")}`);
  for (const [label, p] of rows) {
    console.log(
      `${label.padEnd(width)}  ${String(p.n).padStart(9)}${[p.p50, p.p95, p.p99, p.max].map((v) => fmt(v).padStart(9)).join("")}`,
    );
  }
}

/** Runs the CLI and fails loudly if it fails. */
export function runCliQuiet(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RUNNER_BIN, ...args], { stdio: ["ignore", "ignore", "inherit"] });
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`runner ${args[0]} exited ${code}`))));
  });
}
