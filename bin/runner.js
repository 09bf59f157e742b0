#!/usr/bin/env node
// Thin launcher: everything lives in the compiled CLI.
import { main } from "../dist/src/program.js";

process.exitCode = await main(process.argv.slice(2));
