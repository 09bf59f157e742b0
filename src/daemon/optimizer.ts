// V8's optimizing compiler (TurboFan), held off while the daemon starts. Start-up runs code
// once: loading ~150 modules (the module loader's own parsers get hot enough to be optimized),
// reading settings and state. Optimizing it is wasted, and the first optimization pages in
// several MB of the compiler's own machine code from the node binary, which an idle daemon
// then carries for ever (measured with `npm run bench -- idle-daemon`: about 62 MB at rest
// with the compiler on from the first line, about 55 MB held until the first connect).
// Turning it off for good is no answer: relaying a job's output then costs 5-7 times the CPU.
// So the launcher holds it for `runner start` only, and the daemon releases it when its
// channel first connects, before any job can arrive; from then on V8 tiers up as usual.
// V8 reads this flag at each tier-up decision, so setting it at run time takes effect.
import v8 from "node:v8";

let held = false;

export function holdOptimizingCompiler(): void {
  v8.setFlagsFromString("--no-opt");
  held = true;
}

export function releaseOptimizingCompiler(): void {
  if (!held) return;
  held = false;
  v8.setFlagsFromString("--opt");
}
