// A seeded PRNG (mulberry32): the whole fault run is a function of its seed, printed at the
// start, so a failing run can be replayed with FAULTS_SEED=<seed>.
import { randomInt } from "node:crypto";

export class Prng {
  private state: number;

  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }

  /** The seed from FAULTS_SEED, else a fresh random one. */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): Prng {
    const given = env.FAULTS_SEED;
    if (given !== undefined && given.trim() !== "") {
      const seed = Number(given);
      if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff)
        throw new Error(`FAULTS_SEED must be an integer from 0 to 4294967295, not ${given}`);
      return new Prng(seed);
    }
    return new Prng(randomInt(0, 0xffffffff));
  }

  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  chance(probability: number): boolean {
    return this.next() < probability;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error("pick from an empty list");
    return items[this.int(0, items.length - 1)]!;
  }

  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(0, i);
      [items[i], items[j]] = [items[j]!, items[i]!];
    }
    return items;
  }

  /** A string of `length` characters drawn from `alphabet`. */
  string(length: number, alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"): string {
    let out = "";
    for (let i = 0; i < length; i++) out += alphabet[this.int(0, alphabet.length - 1)];
    return out;
  }

  /** A child generator, so one phase's draws do not shift another's. */
  fork(): Prng {
    return new Prng(this.int(0, 0xffffffff));
  }
}
