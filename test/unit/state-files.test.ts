import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { z } from "zod";
import { execFileSync } from "node:child_process";
import { RunnerError } from "../../src/errors.js";
import { acquireLock } from "../../src/state/lock.js";
import {
  ForeignEntryError,
  chmodNoFollow,
  ensureDir,
  makeDirs,
  moveAside,
  readJsonDir,
  readJsonFile,
  removeInterruptedWrites,
  writeJsonAtomic,
} from "../../src/state/files.js";

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
  const names = [
    `.job.1.json.${other}.1795461951811.tmp`,
    `job.2.json.${other}.now.tmp`,
    `.job.3.json.${process.pid}.1795461951811.tmp`,
    "job.4.json",
    "notes.tmp",
  ];
  for (const name of names) await fs.writeFile(path.join(d, name), "{}");
  assert.deepEqual((await removeInterruptedWrites(d)).sort(), [names[0], names[1]].sort());
  assert.deepEqual((await fs.readdir(d)).sort(), [names[2], names[3], names[4]].sort());
  assert.deepEqual(await removeInterruptedWrites(path.join(d, "missing")), []);
});

/** A file outside the "state dir" and a link to it inside; the outside file must never change. */
async function outsideAndLink(): Promise<{ d: string; outside: string; link: string; check: () => Promise<void> }> {
  const d = await dir();
  const outside = path.join(await dir(), "precious.json");
  await fs.writeFile(outside, '{"a": 7}', { mode: 0o644 });
  const link = path.join(d, "x.json");
  await fs.symlink(outside, link);
  const check = async () => {
    assert.equal(await fs.readFile(outside, "utf8"), '{"a": 7}', "the outside file's content is untouched");
    assert.equal((await fs.stat(outside)).mode & 0o777, 0o644, "the outside file's mode is untouched");
  };
  return { d, outside, link, check };
}

test("a read never follows a link: a link to a valid file outside reads as invalid", { timeout: 10_000 }, async () => {
  const { link, check } = await outsideAndLink();
  const read = await readJsonFile(link, schema);
  assert.equal(read.kind, "invalid");
  assert.match(read.kind === "invalid" ? read.reason : "", /x\.json is a symlink, not a file/);
  await check();
});

test(
  "a fifo or a directory where a file belongs reads as invalid, and reading a fifo does not block",
  { timeout: 10_000 },
  async () => {
    const d = await dir();
    const fifo = path.join(d, "fifo.json");
    execFileSync("mkfifo", [fifo]);
    assert.match(JSON.stringify(await readJsonFile(fifo, schema)), /is a fifo, not a file/);
    await fs.mkdir(path.join(d, "dir.json"));
    assert.match(JSON.stringify(await readJsonFile(path.join(d, "dir.json"), schema)), /is a directory, not a file/);
  },
);

test("chmod through a link is refused and leaves the target's mode alone", { timeout: 10_000 }, async () => {
  const { link, check } = await outsideAndLink();
  await assert.rejects(chmodNoFollow(link, 0o600, "file"), ForeignEntryError);
  await check();
});

test("an atomic write replaces a link at its name instead of writing through it", { timeout: 10_000 }, async () => {
  const { link, check } = await outsideAndLink();
  await writeJsonAtomic(link, { a: 1 });
  assert.equal((await fs.lstat(link)).isFile(), true, "the link was replaced by a real file");
  assert.deepEqual(await readJsonFile(link, schema), { kind: "ok", value: { a: 1 } });
  await check();
});

test(
  "a linked record in a record dir is moved aside unread; a linked record dir is refused",
  { timeout: 10_000 },
  async () => {
    const { d, outside, check } = await outsideAndLink();
    await fs.writeFile(path.join(d, "y.json"), '{"a": 2}');
    const read = await readJsonDir(d, schema, new Date("2026-01-02T03:04:05.678Z"));
    assert.deepEqual(read.values, [{ a: 2 }]);
    assert.deepEqual(
      read.setAside.map((f) => path.basename(f.file)),
      ["x.json.corrupt-2026-01-02T03-04-05-678Z"],
    );
    assert.equal((await fs.lstat(read.setAside[0]!.file)).isSymbolicLink(), true, "the link itself was moved");
    await check();

    const linkedDir = path.join(d, "running");
    await fs.symlink(path.dirname(outside), linkedDir);
    await assert.rejects(readJsonDir(linkedDir, schema, new Date()), ForeignEntryError);
    await assert.rejects(ensureDir(linkedDir), ForeignEntryError);
    await fs.writeFile(path.join(path.dirname(outside), `.x.json.${process.pid + 1}.1.tmp`), "{}");
    await assert.rejects(removeInterruptedWrites(linkedDir), ForeignEntryError);
    await fs.rm(path.join(path.dirname(outside), `.x.json.${process.pid + 1}.1.tmp`));
    await ensureDir(linkedDir, { followLink: true });
    await check();
    assert.deepEqual(
      await fs.readdir(path.dirname(outside)),
      ["precious.json"],
      "nothing was moved or created outside",
    );
  },
);

test(
  "a dir that cannot be made, or a lock that cannot be written, is a state_invalid error naming the path and the cause",
  { timeout: 10_000 },
  async () => {
    const d = await dir();
    const file = path.join(d, "a-file");
    await fs.writeFile(file, "");
    await makeDirs(path.join(d, "x", "y", "z"));
    assert.ok((await fs.stat(path.join(d, "x", "y", "z"))).isDirectory());
    await assert.rejects(
      makeDirs(path.join(file, "sub")),
      (error: unknown) =>
        error instanceof RunnerError &&
        error.code === "state_invalid" &&
        /cannot create the directory .*a-file\/sub: ENOTDIR/.test(error.message),
    );
    await assert.rejects(
      acquireLock(path.join(file, "runner.lock")),
      (error: unknown) =>
        error instanceof RunnerError &&
        error.code === "state_invalid" &&
        /cannot write the lock .*runner\.lock: ENOTDIR/.test(error.message),
    );
    // No state dir at all: nothing is registered there (unregister, credentials move).
    await assert.rejects(
      acquireLock(path.join(d, "missing", "runner.lock")),
      (error: unknown) =>
        error instanceof RunnerError &&
        error.code === "not_registered" &&
        /no runner is registered in/.test(error.message),
    );
  },
);
