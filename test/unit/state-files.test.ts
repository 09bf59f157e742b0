import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { z } from "zod";
import { moveAside, readJsonFile, writeJsonAtomic } from "../../src/state/files.js";

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
