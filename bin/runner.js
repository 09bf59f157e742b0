#!/usr/bin/env node
// Thin launcher: everything lives in the compiled CLI. The daemon starts with V8's optimizing
// compiler held off (src/daemon/optimizer.ts says why), so the program is imported after that.
import { holdOptimizingCompiler } from "../dist/src/daemon/optimizer.js";

const argv = process.argv.slice(2);
if (argv[0] === "start") holdOptimizingCompiler();
const { main } = await import("../dist/src/program.js");
process.exitCode = await main(argv);
