// What the fault run counts, and the summary it prints at the end.

export class Tally {
  cycles = 0;
  jobsSubmitted = 0;
  readonly faults = new Map<string, number>();
  lost = 0;
  appliedTwice = 0;
  orphans = 0;
  crashes = 0;
  readonly fuzzFrames = { toRunner: 0, toControlPlane: 0 };
  /** Things worth a person's eye that do not fail the run (e.g. a race window not held). */
  readonly notes: string[] = [];
  /** Why each lost / applied-twice / orphan / crash was counted. */
  readonly findings: string[] = [];
  readonly recoveryMs: number[] = [];
  /** kind → total ms spent injecting and recovering from it, and the longest once. */
  readonly faultMs = new Map<string, { total: number; max: number }>();

  fault(kind: string, ms: number): void {
    this.faults.set(kind, (this.faults.get(kind) ?? 0) + 1);
    const time = this.faultMs.get(kind) ?? { total: 0, max: 0 };
    this.faultMs.set(kind, { total: time.total + ms, max: Math.max(time.max, ms) });
  }

  get faultsInjected(): number {
    let sum = 0;
    for (const n of this.faults.values()) sum += n;
    return sum;
  }

  finding(kind: "lost" | "appliedTwice" | "orphans" | "crashes", detail: string, count = 1): void {
    this[kind] += count;
    this.findings.push(`${kind}: ${detail}`);
  }

  get failed(): boolean {
    return this.lost + this.appliedTwice + this.orphans + this.crashes > 0;
  }

  summary(seed: number, elapsedMs: number): string {
    const byKind = [...this.faults]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, n]) => `${k}=${n}`)
      .join(" ");
    const sorted = [...this.recoveryMs].sort((a, b) => a - b);
    const pct = (p: number) =>
      sorted.length === 0 ? "-" : `${sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]} ms`;
    return [
      "== fault suite summary ==",
      `seed:               ${seed} (replay: FAULTS_SEED=${seed})`,
      `elapsed:            ${(elapsedMs / 1000).toFixed(1)} s`,
      `cycles:             ${this.cycles}`,
      `jobs submitted:     ${this.jobsSubmitted}`,
      `faults injected:    ${this.faultsInjected} (${byKind})`,
      `fuzz frames sent:   ${this.fuzzFrames.toRunner + this.fuzzFrames.toControlPlane} (to the runner ${this.fuzzFrames.toRunner}, to the control plane ${this.fuzzFrames.toControlPlane})`,
      `time per fault:     ${[...this.faultMs]
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([k, v]) => `${k} avg ${Math.round(v.total / (this.faults.get(k) ?? 1))} max ${Math.round(v.max)} ms`)
        .join(", ")}`,
      `reconnect after a link fault: p50 ${pct(0.5)}, max ${pct(1)} (${sorted.length} measured)`,
      `lost:               ${this.lost}`,
      `applied twice:      ${this.appliedTwice}`,
      `orphans:            ${this.orphans}`,
      `crashes:            ${this.crashes}`,
      ...this.findings.map((f) => `  finding: ${f}`),
      ...this.notes.map((n) => `  note: ${n}`),
      this.failed ? "RESULT: FAILED (lost, applied twice, orphans or crashes above zero)" : "RESULT: OK",
    ].join("\n");
  }
}
