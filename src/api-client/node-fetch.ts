// A fetch-shaped request over node:http and node:https, for the API client's direct requests
// (no proxy). Why not the global fetch: in Node 20 its first call loads the bundled undici and
// its web streams, about 15 MB of RSS that the daemon would keep for ever for the one verify
// request it makes at start (measured: fetch +16 MB, this +2 MB). It does what the client asks
// of fetch and no more: one request with a string body, redirects returned (never followed),
// the signal's reason as the error once it aborts (before the answer or while the body
// streams), and a system error's code in `cause`, as fetch puts it.
import http from "node:http";
import https from "node:https";

export interface DirectRequest {
  method: string;
  headers: Record<string, string>;
  body: string | undefined;
  /** A redirect is returned as the answer; it is never followed. */
  redirect: "manual";
  signal: AbortSignal;
}

export interface DirectAnswer {
  status: number;
  ok: boolean;
  headers: { get(name: string): string | null };
  /** Pulled from the socket as it is read: a body nobody reads is not buffered. */
  body: ReadableStream<Uint8Array> | null;
}

export function directFetch(url: URL, init: DirectRequest): Promise<DirectAnswer> {
  const { signal } = init;
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  const transport = url.protocol === "https:" ? https : http;
  const headers = {
    ...init.headers,
    ...(init.body === undefined ? {} : { "content-length": Buffer.byteLength(init.body) }),
  };
  return new Promise((resolve, reject) => {
    const request = transport.request(url, { method: init.method, headers });
    const onAbort = () => {
      // Ends the socket; a body still being read fails with the same reason (see toBody).
      request.destroy(signal.reason as Error);
      reject(signal.reason as Error);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    request.on("error", (error) => {
      signal.removeEventListener("abort", onAbort);
      reject(signal.aborted ? (signal.reason as Error) : new TypeError("request failed", { cause: error }));
    });
    request.on("response", (response) => {
      signal.removeEventListener("abort", onAbort);
      const status = response.statusCode ?? 0;
      resolve({
        status,
        ok: status >= 200 && status < 300,
        headers: { get: (name) => headerValue(response.headers[name.toLowerCase()]) },
        body: init.method === "HEAD" || status === 204 || status === 304 ? null : toBody(response, signal),
      });
    });
    request.end(init.body);
  });
}

function headerValue(value: string | string[] | undefined): string | null {
  if (value === undefined) return null;
  return Array.isArray(value) ? value.join(", ") : value;
}

/** The response as a byte stream that reads from the socket only when pulled, and fails with the signal's reason. */
function toBody(response: http.IncomingMessage, signal: AbortSignal): ReadableStream<Uint8Array> {
  let onAbort: (() => void) | undefined;
  const cleanUp = () => {
    if (onAbort) signal.removeEventListener("abort", onAbort);
  };
  return new ReadableStream<Uint8Array>({
    start(controller) {
      response.pause();
      onAbort = () => {
        controller.error(signal.reason);
        response.destroy();
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      response.on("data", (chunk: Buffer) => {
        controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        if ((controller.desiredSize ?? 0) <= 0) response.pause();
      });
      response.on("end", () => {
        cleanUp();
        controller.close();
      });
      response.on("error", (error) => {
        cleanUp();
        controller.error(signal.aborted ? signal.reason : new TypeError("the answer broke off", { cause: error }));
      });
    },
    pull() {
      response.resume();
    },
    cancel() {
      cleanUp();
      response.destroy();
    },
  });
}
