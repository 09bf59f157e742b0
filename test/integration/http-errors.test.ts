// What the real CLI does with every kind of answer a control plane (or a proxy in front of
// one) can give: a loopback node:http server answers as each case says, and `runner register`,
// `repair` and `verify` must exit with the documented code and say clearly what came back,
// with the body capped and no secret in it (PROTOCOL.md, "Errors"; README, exit codes).
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { runCli } from "../helpers/cli.js";
import { fakePlane, type Answer } from "../helpers/fake-plane.js";
import { tempDir } from "../helpers/fixtures.js";
import { ExitCode } from "../../src/errors.js";
import { fingerprintOf } from "../../src/state/host.js";

const TOKEN = "rgt_" + "T".repeat(43);
const CREDENTIAL = "rnc_" + "C".repeat(43);
const TIMEOUT_MS = 1_500;

const send =
  (status: number, type: string | null, body: string): Answer =>
  (_req, res) => {
    res.writeHead(status, type === null ? {} : { "content-type": type }).end(body);
  };
const json = (status: number, code: string, message: string) =>
  send(status, "application/json", JSON.stringify({ error: { code, message } }));

const BIG_HTML = "<html><body>" + "<p>Bad Gateway, please try again.</p>".repeat(200) + "</body></html>";

interface Case {
  name: string;
  answer: Answer;
  exit: number;
  says: RegExp;
}

const cases: Case[] = [
  {
    name: "a 401 with a plain-text body needs an operator (78), by its status",
    answer: send(401, "text/plain", "Unauthorized"),
    exit: ExitCode.NEEDS_OPERATOR,
    says: /answered HTTP 401, a body that is not a protocol error: "Unauthorized"/,
  },
  {
    name: "a 401 JSON error with a code the protocol does not define is treated by its status (78)",
    answer: json(401, "sso_required", "log in first"),
    exit: ExitCode.NEEDS_OPERATOR,
    says: /answered HTTP 401/,
  },
  {
    name: "a 403 HTML page from a proxy needs an operator (78)",
    answer: send(403, "text/html", "<h1>Forbidden</h1>"),
    exit: ExitCode.NEEDS_OPERATOR,
    says: /HTTP 403, a body that is not a protocol error: "<h1>Forbidden<\/h1>"[\s\S]*check --url/,
  },
  {
    name: "a 404 from something that is not a control plane needs an operator (78)",
    answer: send(404, "text/plain", "Not Found"),
    exit: ExitCode.NEEDS_OPERATOR,
    says: /HTTP 404, a body that is not a protocol error: "Not Found"/,
  },
  {
    name: "a 426 with a text body means upgrade (79)",
    answer: send(426, "text/plain", "Upgrade Required"),
    exit: ExitCode.UPGRADE_REQUIRED,
    says: /HTTP 426/,
  },
  {
    name: "a 500 HTML page means try again later (69), its body capped",
    answer: send(500, "text/html", BIG_HTML),
    exit: ExitCode.UNAVAILABLE,
    says: /HTTP 500, a body that is not a protocol error: "<html><body><p>Bad Gateway.*… \(\d+ more characters\)/,
  },
  {
    name: "a 502 with an empty body means try again later (69)",
    answer: send(502, null, ""),
    exit: ExitCode.UNAVAILABLE,
    says: /HTTP 502, a body that is not a protocol error: \(empty\)/,
  },
  {
    name: "a 429 means try again later (69)",
    answer: send(429, "text/plain", "slow down"),
    exit: ExitCode.UNAVAILABLE,
    says: /HTTP 429/,
  },
  {
    name: "another 4xx without a protocol error body is a usage error (2)",
    answer: send(400, "text/plain", "Bad Request"),
    exit: ExitCode.USAGE,
    says: /HTTP 400, a body that is not a protocol error: "Bad Request"/,
  },
  {
    name: "a 200 whose body is not JSON is an answer the runner does not understand (2)",
    answer: send(200, "application/json", '{"runnerId": "rnr_'),
    exit: ExitCode.USAGE,
    says: /does not understand \(\/runners\/register, HTTP 200: "\{\\"runnerId\\": \\"rnr_"\)/,
  },
  {
    name: "a redirect is reported, not followed, so the token goes nowhere else (2)",
    answer: (_req, res) => res.writeHead(307, { location: "http://127.0.0.1:9/elsewhere" }).end(),
    exit: ExitCode.USAGE,
    says: /HTTP 307, a redirect to "http:\/\/127\.0\.0\.1:9\/elsewhere", which is not followed/,
  },
  {
    name: "a used or wrong registration token has its own message and exit code (77)",
    answer: json(401, "registration_token_invalid", "the registration token is unknown, already used or expired"),
    exit: ExitCode.TOKEN_REFUSED,
    says: /refused the registration token: it is unknown, already used or expired[\s\S]*ask an admin for a new registration token/,
  },
  {
    name: "a server that never answers is unreachable (69) once the request timeout passes",
    answer: () => undefined,
    exit: ExitCode.UNAVAILABLE,
    says: new RegExp(`no answer within ${TIMEOUT_MS} ms`),
  },
  {
    name: "a server that sends headers and then stalls is unreachable (69), not an internal error",
    answer: (_req, res) => res.writeHead(200, { "content-type": "application/json" }).write('{"runnerId":'),
    exit: ExitCode.UNAVAILABLE,
    says: new RegExp(`no complete answer within ${TIMEOUT_MS} ms`),
  },
  {
    name: "a server that echoes the bearer token back never gets it printed",
    answer: (req, res) =>
      res
        .writeHead(401, { "content-type": "text/plain" })
        .end(`bad token ${req.headers.authorization ?? ""} and rnc_${"z".repeat(40)}`),
    exit: ExitCode.NEEDS_OPERATOR,
    says: /"bad token Bearer \[redacted\] and \[redacted\]"/,
  },
];

function assertNoSecret(output: string): void {
  assert.ok(!output.includes(TOKEN.slice(4)), `the registration token leaked:\n${output}`);
  assert.ok(
    !output.includes(CREDENTIAL.slice(4)) && !output.includes("z".repeat(40)),
    `a credential leaked:\n${output}`,
  );
}

describe("runner register against every kind of error answer", () => {
  for (const c of cases) {
    test(c.name, { timeout: 60_000 }, async (t) => {
      const plane = await fakePlane(t, c.answer);
      const dir = await tempDir(t);
      const tokenFile = path.join(dir, "token");
      await fs.writeFile(tokenFile, TOKEN + "\n", { mode: 0o600 });
      const flags = [
        "--state-dir",
        path.join(dir, "state"),
        "--credential-store",
        "file",
        "--request-timeout-ms",
        String(TIMEOUT_MS),
      ];
      const result = await runCli([
        "register",
        "--url",
        plane.url,
        "--token-file",
        tokenFile,
        "--name",
        "box",
        ...flags,
      ]);
      assert.equal(result.code, c.exit, result.all);
      assert.match(result.stderr, c.says);
      assert.ok(result.stderr.length < 1_000, `the message is capped (${result.stderr.length} chars)`);
      assertNoSecret(result.all);
      assert.deepEqual(
        plane.requests,
        ["POST /api/v1/runners/register"],
        "one request, no redirect followed, no retry",
      );
    });
  }
});

/** A registered-looking state dir (file store) that points at the fake control plane. */
async function stateFor(t: TestContext, url: string): Promise<string[]> {
  const stateDir = path.join(await tempDir(t), "state");
  await fs.mkdir(path.join(stateDir, "outbox"), { recursive: true, mode: 0o700 });
  await fs.chmod(stateDir, 0o700);
  const runnerId = "rnr_" + "a".repeat(24);
  const registration = {
    version: 1,
    runnerId,
    url,
    name: "box",
    labels: [],
    credentialStore: "file",
    hostFingerprint: fingerprintOf("machine-A"),
    registeredAt: "2026-01-01T00:00:00.000Z",
  };
  await fs.writeFile(path.join(stateDir, "registration.json"), JSON.stringify(registration), { mode: 0o600 });
  await fs.writeFile(
    path.join(stateDir, "credential"),
    JSON.stringify({ v: 1, runnerId, url, credential: CREDENTIAL }),
    { mode: 0o600 },
  );
  return ["--state-dir", stateDir, "--machine-id", "machine-A", "--request-timeout-ms", String(TIMEOUT_MS)];
}

describe("runner repair and verify against error answers to verify", () => {
  const repairCases: Case[] = [
    {
      name: "a 401 text answer to verify stops repair for an operator (78)",
      answer: send(401, "text/plain", "Unauthorized"),
      exit: ExitCode.NEEDS_OPERATOR,
      says: /HTTP 401, a body that is not a protocol error: "Unauthorized"/,
    },
    {
      name: "a 404 HTML answer to verify stops repair for an operator (78)",
      answer: send(404, "text/html", "<p>no</p>"),
      exit: ExitCode.NEEDS_OPERATOR,
      says: /HTTP 404/,
    },
    {
      name: "a 426 text answer to verify makes repair exit 79",
      answer: send(426, "text/plain", "Upgrade Required"),
      exit: ExitCode.UPGRADE_REQUIRED,
      says: /HTTP 426/,
    },
    {
      name: "a 502 empty answer to verify makes repair exit 69 (nothing local to fix)",
      answer: send(502, null, ""),
      exit: ExitCode.UNAVAILABLE,
      says: /HTTP 502/,
    },
  ];
  for (const c of repairCases) {
    test(c.name, { timeout: 60_000 }, async (t) => {
      const plane = await fakePlane(t, c.answer);
      const flags = await stateFor(t, plane.url);
      const verify = await runCli(["verify", ...flags]);
      assert.equal(verify.code, ExitCode.UNHEALTHY, verify.all);
      assert.match(verify.stdout, c.says);
      const repair = await runCli(["repair", ...flags]);
      assert.equal(repair.code, c.exit, repair.all);
      assert.match(repair.stdout, c.says);
      assertNoSecret(verify.all + repair.all);
    });
  }
});
