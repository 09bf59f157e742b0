import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { z } from "zod";
import { moveAside, readJsonFile, removeInterruptedWrites, writeJsonAtomic } from "../../src/state/files.js";

const schema = z.object({ a: z.number() });

async function dir(): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), "runner-files-"));
}

test("an atomic write leaves the complete file with mode 0600 and no temp file behind", async () => {
  const d = await dir();
  const file = path.join(d, "x.json");
  await writeJsonAtomic(file, { a: 1 });
  await writeJsonAtomic(file, { a: 2 });
  assert.deepEqual(await readJsonFile(file, schema), { kind: "ok", value: { a: 2 } });
  assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
  assert.deepEqual(await fs.readdir(d), ["x.json"]);
});

test("reads tell a missing file from an empty, truncated or misshapen one", async () => {
  const d = await dir();
  const file = path.join(d, "x.json");
  assert.deepEqual(await readJsonFile(file, schema), { kind: "missing" });
  await fs.writeFile(file, "");
  assert.deepEqual(await readJsonFile(file, schema), { kind: "invalid", reason: "the file is empty" });
  await fs.writeFile(file, '{"a": 1');
  const truncated = await readJsonFile(file, schema);
  assert.equal(truncated.kind, "invalid");
  assert.match(truncated.kind === "invalid" ? truncated.reason : "", /not valid JSON.*truncated/);
  await fs.writeFile(file, '{"a": "one"}');
  const wrong = await readJsonFile(file, schema);
  assert.match(wrong.kind === "invalid" ? wrong.reason : "", /^does not match the expected shape \(a: /);
});

test("moving a bad file aside keeps its content under a new name", async () => {
  const d = await dir();
  const file = path.join(d, "x.json");
  await fs.writeFile(file, "garbage");
  const kept = await moveAside(file, new Date("2026-01-02T03:04:05.678Z"));
  assert.equal(path.basename(kept), "x.json.corrupt-2026-01-02T03-04-05-678Z");
  assert.equal(await fs.readFile(kept, "utf8"), "garbage");
  await assert.rejects(fs.access(file));
});

test("the temp files of writes another process never finished are removed; this process's own and real files are kept", async () => {
  const d = await dir();
  const other = process.pid + 1;
  const names = [`.job.1.json.${other}.1795461951811.tmp`, `job.2.json.${other}.now.tmp`, `.job.3.json.${process.pid}.1795461951811.tmp`, "job.4.json", "notes.tmp"];
  for (const name of names) await fs.writeFile(path.join(d, name), "{}");
  assert.deepEqual((await removeInterruptedWrites(d)).sort(), [names[0], names[1]].sort());
  assert.deepEqual((await fs.readdir(d)).sort(), [names[2], names[3], names[4]].sort());
  assert.deepEqual(await removeInterruptedWrites(path.join(d, "missing")), []);
});
