import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { planRepairs, type ForeignEntry, type Observations } from "../../src/startup/plan.js";
import type { Registration } from "../../src/state/registration.js";

const registration: Registration = {
  version: 1,
  runnerId: "rnr_abcdefghijklmnopqrstuvwx",
  url: "http://127.0.0.1:1",
  name: "box",
  labels: [],
  credentialStore: "keychain",
  hostFingerprint: "a".repeat(64),
  registeredAt: "2026-01-01T00:00:00.000Z",
};
const credential = {
  v: 1 as const,
  runnerId: registration.runnerId,
  url: registration.url,
  credential: "rnc_" + "x".repeat(40),
};

function healthy(): Observations {
  return {
    stateDir: "/s",
    stateDirMode: 0o700,
    outboxMode: 0o700,
    registration: { kind: "ok", value: registration },
    fileModes: [{ path: "/s/registration.json", mode: 0o600 }],
    foreign: [],
    unwritable: [],
    lock: { kind: "free" },
    credential: { kind: "ok", value: credential },
    recoverable: null,
    controlPlane: { kind: "ok" },
    ownership: null,
  };
}
const noToken = { haveRegistrationToken: false };
const link = (name: string, target: string | null = "/elsewhere/x"): ForeignEntry => ({
  path: `/s/${name}`,
  name,
  found: "symlink",
  expected: "file",
  target,
});
const withToken = { haveRegistrationToken: true };
const codes = (o: Observations, c = noToken) => planRepairs(o, c).map((f) => f.code);

describe("the repair planner", () => {
  test("healthy state yields no findings", () => {
    assert.deepEqual(planRepairs(healthy(), noToken), []);
  });

  test("a missing state dir is created, and nothing else is judged until it exists", () => {
    const findings = planRepairs({ ...healthy(), stateDirMode: null }, noToken);
    assert.deepEqual(
      findings.map((f) => f.code),
      ["state_dir_missing"],
    );
    assert.deepEqual(findings[0]?.fix, {
      kind: "auto",
      action: { kind: "create_state_dir" },
      description: "create /s with mode 0700",
    });
  });

  test("a group- or world-readable state dir is tightened to 0700", () => {
    const [finding] = planRepairs({ ...healthy(), stateDirMode: 0o755 }, noToken);
    assert.equal(finding?.code, "state_dir_permissions");
    assert.deepEqual(finding?.fix.kind === "auto" && finding.fix.action, {
      kind: "tighten_mode",
      path: "/s",
      mode: 0o700,
      type: "directory",
    });
  });

  test("a state dir or work dir the runner cannot write is a finding for a person, with no automatic fix", () => {
    const findings = planRepairs(
      {
        ...healthy(),
        unwritable: [
          { path: "/s", role: "state dir", probed: "/s", cause: "EROFS (the file system is read-only)" },
          { path: "/w/jobs", role: "work dir", probed: "/w", cause: "EACCES (permission denied)" },
        ],
      },
      noToken,
    );
    assert.deepEqual(
      findings.map((f) => [f.code, f.fix.kind]),
      [
        ["state_dir_unwritable", "operator"],
        ["work_dir_unwritable", "operator"],
      ],
    );
    assert.match(findings[0]!.problem, /^the state dir \/s cannot be written: EROFS \(the file system is read-only\)/);
    assert.match(findings[0]!.fix.description, /another --state-dir/);
    assert.match(findings[1]!.problem, /^the work dir \/w\/jobs does not exist and cannot be created in \/w: EACCES/);
    assert.match(findings[1]!.fix.description, /another --work-dir/);
  });

  test("a stricter mode than required is not a finding", () => {
    assert.deepEqual(codes({ ...healthy(), stateDirMode: 0o500, fileModes: [{ path: "/s/x", mode: 0o400 }] }), []);
  });

  test("a secret file readable by others is tightened to 0600", () => {
    const [finding] = planRepairs({ ...healthy(), fileModes: [{ path: "/s/credential", mode: 0o644 }] }, noToken);
    assert.equal(finding?.code, "file_permissions");
    assert.deepEqual(finding?.fix.kind === "auto" && finding.fix.action, {
      kind: "tighten_mode",
      path: "/s/credential",
      mode: 0o600,
      type: "file",
    });
  });

  test("a missing outbox is recreated", () => {
    assert.deepEqual(codes({ ...healthy(), outboxMode: null }), ["outbox_missing"]);
  });

  test("a stale lock is removed automatically", () => {
    const findings = planRepairs({ ...healthy(), lock: { kind: "stale", owner: null, reason: "dead" } }, noToken);
    assert.equal(findings[0]?.code, "stale_lock");
    assert.equal(findings[0]?.fix.kind, "auto");
  });

  test("a lock held by a live runner is not a finding", () => {
    const owner = { pid: 1, startTime: "1", hostname: "h", acquiredAt: "t" };
    assert.deepEqual(codes({ ...healthy(), lock: { kind: "held", owner } }), []);
  });

  test("an invalid registration file is set aside first", () => {
    const findings = planRepairs(
      { ...healthy(), registration: { kind: "invalid", reason: "truncated" }, credential: null, controlPlane: null },
      noToken,
    );
    assert.deepEqual(
      findings.map((f) => f.code),
      ["registration_invalid"],
    );
    assert.deepEqual(findings[0]?.fix.kind === "auto" && findings[0].fix.action, { kind: "set_aside_registration" });
  });

  test("a missing registration is rebuilt when a store still holds the credential", () => {
    const findings = planRepairs(
      {
        ...healthy(),
        registration: { kind: "missing" },
        credential: null,
        controlPlane: null,
        recoverable: { store: "keychain", value: credential },
      },
      noToken,
    );
    assert.deepEqual(findings[0]?.fix.kind === "auto" && findings[0].fix.action, {
      kind: "rebuild_registration",
      from: "keychain",
    });
  });

  test("a missing registration with nothing to rebuild from tells the operator to register", () => {
    const [finding] = planRepairs(
      { ...healthy(), registration: { kind: "missing" }, credential: null, controlPlane: null },
      noToken,
    );
    assert.equal(finding?.code, "not_registered");
    assert.equal(finding?.fix.kind, "operator");
    assert.match(finding?.fix.kind === "operator" ? (finding.fix.command ?? "") : "", /^runner register --url/);
  });

  test("a credential missing from the keychain is reported as such, and needs a token", () => {
    const [finding] = planRepairs({ ...healthy(), credential: { kind: "missing" }, controlPlane: null }, noToken);
    assert.equal(finding?.code, "credential_missing");
    assert.equal(finding?.problem, "credential missing from keychain");
    assert.equal(finding?.fix.kind, "operator");
    assert.match(finding?.fix.kind === "operator" ? (finding.fix.command ?? "") : "", /runner repair --token-file/);
  });

  test("with a registration token, a missing credential is fixed by registering again", () => {
    const [finding] = planRepairs({ ...healthy(), credential: { kind: "missing" }, controlPlane: null }, withToken);
    assert.deepEqual(finding?.fix.kind === "auto" && finding.fix.action, { kind: "reregister" });
  });

  test("an unusable keychain is an operator problem, never a silent re-registration", () => {
    const [finding] = planRepairs(
      { ...healthy(), credential: { kind: "unavailable", reason: "locked" }, controlPlane: null },
      withToken,
    );
    assert.equal(finding?.code, "credential_store_unavailable");
    assert.equal(finding?.fix.kind, "operator");
  });

  test("a credential that belongs to another runner is treated as invalid", () => {
    const other = { ...credential, runnerId: "rnr_zzzzzzzzzzzzzzzzzzzzzzzz" };
    assert.deepEqual(codes({ ...healthy(), credential: { kind: "ok", value: other }, controlPlane: null }), [
      "credential_invalid",
    ]);
  });

  test("a revoked credential needs a token, and is re-registered when one is given", () => {
    const seen = {
      ...healthy(),
      controlPlane: { kind: "error" as const, code: "credential_revoked" as const, message: "revoked" },
    };
    assert.equal(planRepairs(seen, noToken)[0]?.fix.kind, "operator");
    assert.deepEqual(planRepairs(seen, withToken)[0]?.fix, {
      kind: "auto",
      action: { kind: "reregister" },
      description: "register again with the given registration token, keeping name and labels",
    });
  });

  test("a runner deleted on the control plane is reported as deleted", () => {
    const seen = {
      ...healthy(),
      controlPlane: { kind: "error" as const, code: "runner_deleted" as const, message: "gone" },
    };
    assert.deepEqual(codes(seen), ["runner_deleted"]);
  });

  test("a changed host is re-bound automatically while the credential is valid", () => {
    const seen = {
      ...healthy(),
      controlPlane: { kind: "error" as const, code: "host_fingerprint_mismatch" as const, message: "409" },
    };
    const [finding] = planRepairs(seen, noToken);
    assert.equal(finding?.code, "host_changed");
    assert.deepEqual(finding?.fix.kind === "auto" && finding.fix.action, { kind: "rebind_host" });
  });

  test("an unreachable control plane is something to wait for, not to fix", () => {
    const seen = {
      ...healthy(),
      controlPlane: { kind: "error" as const, code: "control_plane_unavailable" as const, message: "ECONNREFUSED" },
    };
    assert.equal(planRepairs(seen, withToken)[0]?.fix.kind, "retry");
  });

  test("local findings and identity findings are reported together", () => {
    const seen = {
      ...healthy(),
      stateDirMode: 0o777,
      controlPlane: { kind: "error" as const, code: "runner_deleted" as const, message: "gone" },
    };
    assert.deepEqual(codes(seen), ["state_dir_permissions", "runner_deleted"]);
  });

  test("a link where a state file belongs is moved aside, naming where it points", () => {
    const [finding, ...rest] = planRepairs({ ...healthy(), foreign: [link("runner.lock")] }, noToken);
    assert.deepEqual(rest, []);
    assert.equal(finding?.code, "foreign_file_type");
    assert.match(
      finding?.problem ?? "",
      /^runner\.lock is a symbolic link to \/elsewhere\/x where a regular file belongs/,
    );
    assert.deepEqual(finding?.fix.kind === "auto" && finding.fix.action, {
      kind: "set_aside_entry",
      path: "/s/runner.lock",
      expected: "file",
    });
  });

  test("a directory, fifo or socket where a state file belongs is a finding like a link", () => {
    const others: ForeignEntry[] = [
      { path: "/s/registration.json", name: "registration.json", found: "directory", expected: "file", target: null },
      { path: "/s/devices.json", name: "devices.json", found: "fifo", expected: "file", target: null },
      { path: "/s/outbox/j.1.json", name: "outbox/j.1.json", found: "socket", expected: "file", target: null },
    ];
    const findings = planRepairs({ ...healthy(), foreign: others }, noToken);
    assert.deepEqual(
      findings.map((f) => f.problem.split(" where")[0]),
      ["registration.json is a directory", "devices.json is a fifo", "outbox/j.1.json is a socket"],
    );
  });

  test("nothing read through a foreign registration or credential is judged until it is moved aside", () => {
    // What the reads said must not turn into a chmod, a set-aside or a re-registration of the link's target.
    for (const name of ["registration.json", "credential"]) {
      const seen = {
        ...healthy(),
        foreign: [link(name)],
        registration: { kind: "invalid" as const, reason: "a symlink" },
        credential: { kind: "unavailable" as const, reason: "ELOOP" },
      };
      assert.deepEqual(codes(seen, withToken), ["foreign_file_type"], name);
    }
  });

  test("a foreign lock is not also reported as a stale lock, and a foreign outbox not as a missing one", () => {
    const outbox: ForeignEntry = {
      path: "/s/outbox",
      name: "outbox",
      found: "symlink",
      expected: "directory",
      target: "/tmp/o",
    };
    const seen = {
      ...healthy(),
      foreign: [link("runner.lock", null), outbox],
      lock: { kind: "stale" as const, owner: null, reason: "unreadable" },
      outboxMode: null,
    };
    assert.deepEqual(codes(seen), ["foreign_file_type", "foreign_file_type"]);
    assert.match(planRepairs(seen, noToken)[0]?.problem ?? "", /^runner\.lock is a symbolic link where/);
  });
});

describe("the repair planner on owners", () => {
  const entry = (name: string, uid: number, owner: string, tree = false) => ({
    path: name === "" ? "/s" : `/s/${name}`,
    name: name === "" ? "/s" : name,
    uid,
    owner,
    tree,
  });
  const owned = (
    runningAs: { uid: number; name: string },
    entries: ReturnType<typeof entry>[],
    wanted = null as { uid: number; name: string } | null,
  ) => ({
    ...healthy(),
    ownership: { runningAs, wanted, entries },
  });
  const ci = { uid: 1001, name: "ci" };
  const root = { uid: 0, name: "root" };

  test("a user whose state dir belongs to root is told to have root give it to them, and nothing else is judged", () => {
    const findings = planRepairs(
      { ...owned(ci, [entry("", 0, "root")]), outboxMode: null, registration: { kind: "missing" } },
      noToken,
    );
    assert.deepEqual(
      findings.map((f) => f.code),
      ["state_dir_owner"],
    );
    assert.match(findings[0]!.problem, /^the state dir \/s belongs to root, not ci \(who runs this\)/);
    assert.deepEqual(findings[0]!.fix, {
      kind: "operator",
      description: "only root can give it to ci",
      command: "sudo runner repair --state-dir /s --owner ci",
    });
  });

  test("root finds the files in a service user's state dir that are not that user's, and gives them to it", () => {
    const seen = owned(root, [
      entry("", 1001, "ci"),
      entry("registration.json", 0, "root"),
      entry("credential", 1001, "ci"),
      entry("work/job-1-1", 0, "root", true),
    ]);
    const findings = planRepairs(seen, noToken);
    assert.deepEqual(
      findings.map((f) => f.code),
      ["file_owner", "file_owner"],
    );
    assert.match(findings[0]!.problem, /^registration\.json belongs to root, not ci \(the state dir's owner\)/);
    assert.deepEqual(
      findings.map((f) => f.fix.kind === "auto" && f.fix.action),
      [
        { kind: "set_owner", path: "/s/registration.json", owner: "ci", tree: false },
        { kind: "set_owner", path: "/s/work/job-1-1", owner: "ci", tree: true },
      ],
    );
  });

  test("root asked for an owner gives it the state dir itself too; a healthy state is judged as usual alongside", () => {
    const seen = owned(root, [entry("", 0, "root"), entry("registration.json", 0, "root")], ci);
    assert.deepEqual(codes(seen), ["state_dir_owner", "file_owner"]);
    assert.deepEqual(codes(owned(root, [entry("", 0, "root"), entry("registration.json", 0, "root")])), []);
  });

  test("a user's file left in their state dir by root is an operator's fix, and the identity is not read", () => {
    const seen = { ...owned(ci, [entry("", 1001, "ci"), entry("runner.lock", 0, "root")]), controlPlane: null };
    const findings = planRepairs({ ...seen, credential: { kind: "missing" as const } }, noToken);
    assert.deepEqual(
      findings.map((f) => f.code),
      ["file_owner"],
    );
    assert.equal(findings[0]!.fix.kind, "operator");
  });
});
