#!/usr/bin/env node
// Runs one benchmark (or all) and records its output in bench/results/<name>.txt, headed by
// the command, the date and the machine, so every recorded number says where it came from.
//   npm run bench                 all of them
//   npm run bench -- dispatch-latency 300 20
import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync, readdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
const [only, ...args] = process.argv.slice(2);
const names = only
  ? [only]
  : readdirSync(path.join(root, "bench"))
      .filter((f) => f.endsWith(".ts") && f !== "support.ts")
      .map((f) => f.slice(0, -3));
mkdirSync(path.join(root, "bench", "results"), { recursive: true });

for (const name of names) {
  const command = ["node", `dist/bench/${name}.js`, ...args].join(" ");
  const out = createWriteStream(path.join(root, "bench", "results", `${name}.txt`));
  const header = `$ ${command}\n# ${new Date().toISOString()} on ${os.cpus().length}x ${os.cpus()[0]?.model ?? "cpu"}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}\n`;
  out.write(header);
  process.stdout.write(header);
  const child = spawn(process.execPath, [path.join(root, "dist", "bench", `${name}.js`), ...args], {
    cwd: root,
    stdio: ["ignore", "pipe", "inherit"],
  });
  child.stdout.on("data", (d) => {
    out.write(d);
    process.stdout.write(d);
  });
  const code = await new Promise((resolve) => child.on("exit", resolve));
  out.end();
  if (code !== 0) {
    process.stderr.write(`bench ${name} failed (${code})\n`);
    process.exitCode = 1;
  }
}
