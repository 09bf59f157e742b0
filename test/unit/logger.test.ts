import { test } from "node:test";
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { fstatSync } from "node:fs";
import { createLogger, stderrIsTheJournal } from "../../src/log/logger.js";

function capture() {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  return { destination, text: () => lines.join("") };
}

test("the logger censors secret fields and authorization headers wherever they sit", () => {
  const out = capture();
  const log = createLogger({ level: "debug", format: "json", destination: out.destination as never });
  log.debug(
    {
      credential: "S1",
      req: { headers: { authorization: "Bearer S2" } },
      nested: { token: "S3" },
      a: { b: { secret: "S4" } },
    },
    "x",
  );
  const text = out.text();
  for (const secret of ["S1", "S2", "S3", "S4"]) assert.ok(!text.includes(secret), `${secret} leaked: ${text}`);
  assert.equal(text.match(/\[redacted\]/g)?.length, 4);
});

test("the logger writes one JSON object per line", () => {
  const out = capture();
  const log = createLogger({ level: "info", format: "json", destination: out.destination as never });
  log.info({ jobId: "j1" }, "hello");
  const line = JSON.parse(out.text().trim()) as { msg: string; jobId: string; level: number };
  assert.deepEqual([line.msg, line.jobId, line.level], ["hello", "j1", 30]);
});

test("under journald each JSON line starts with its syslog priority, so journalctl -p err finds errors", () => {
  const out = capture();
  const log = createLogger({
    level: "debug",
    format: "json",
    destination: out.destination as never,
    journalPriorities: true,
  });
  log.debug("d");
  log.info("i");
  log.warn("w");
  log.error("e");
  log.fatal("f");
  const lines = out.text().trim().split("\n");
  assert.deepEqual(
    lines.map((line) => line.slice(0, 3)),
    ["<7>", "<6>", "<4>", "<3>", "<2>"],
  );
  for (const line of lines) assert.ok(JSON.parse(line.slice(3)), "the rest of the line is the JSON object");
});

test("the journal is recognised by JOURNAL_STREAM naming stderr's own device and inode, and only then", () => {
  const { dev, ino } = fstatSync(2);
  assert.equal(stderrIsTheJournal({ JOURNAL_STREAM: `${dev}:${ino}` }), true);
  assert.equal(stderrIsTheJournal({ JOURNAL_STREAM: `${dev}:${ino + 1}` }), false, "stderr redirected elsewhere");
  assert.equal(stderrIsTheJournal({}), false);
});
