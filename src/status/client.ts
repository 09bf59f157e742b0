// How `runner status` asks a running daemon for its /status over the state dir's socket. A
// daemon that is not running, or does not answer in time, is an answer too: it says why.
import http from "node:http";
import { statusViewSchema, type StatusView } from "./view.js";

export type DaemonAnswer = { kind: "running"; view: StatusView } | { kind: "none"; reason: string };

/** How long `runner status` waits for the daemon's answer. */
export const STATUS_TIMEOUT_MS = 2_000;
/** A status larger than this is not what a daemon sends. */
const MAX_STATUS_BYTES = 4 * 1024 * 1024;

export function readDaemonStatus(socketPath: string, timeoutMs = STATUS_TIMEOUT_MS): Promise<DaemonAnswer> {
  return new Promise((resolve) => {
    let settled = false;
    const done = (answer: DaemonAnswer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      request.destroy();
      resolve(answer);
    };
    const none = (reason: string) => done({ kind: "none", reason });
    const request = http.get({ socketPath, path: "/status", headers: { accept: "application/json" } }, (response) => {
      const chunks: Buffer[] = [];
      let size = 0;
      response.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_STATUS_BYTES) return none(`the daemon's status is larger than ${MAX_STATUS_BYTES} bytes`);
        chunks.push(chunk);
      });
      response.on("error", (error) => none(`the daemon's answer broke off (${error.message})`));
      response.on("end", () => {
        if (response.statusCode !== 200) return none(`the daemon answered HTTP ${response.statusCode} to /status`);
        let body: unknown;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        } catch {
          return none("the daemon's answer to /status is not JSON");
        }
        const parsed = statusViewSchema.safeParse(body);
        if (parsed.success) return done({ kind: "running", view: parsed.data });
        const issue = parsed.error.issues[0];
        none(`the daemon's status is not what this runner expects (${issue?.path.join(".")}: ${issue?.message})`);
      });
    });
    // A whole-request deadline: connect, headers and body.
    const timer = setTimeout(
      () => none(`the daemon did not answer on ${socketPath} within ${timeoutMs} ms`),
      timeoutMs,
    );
    request.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return none(`no daemon is running: nothing at ${socketPath}`);
      if (error.code === "ECONNREFUSED") return none(`no daemon is running: nothing listens on ${socketPath}`);
      none(`could not reach the daemon on ${socketPath} (${error.code ?? error.message})`);
    });
  });
}
