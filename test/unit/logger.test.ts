import { test } from "node:test";
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { createLogger } from "../../src/log/logger.js";

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
