// The thin drivers of a proxy decision (net/proxy.ts): undici's ProxyAgent as the dispatcher of
// undici's own fetch, for the HTTP API, and https-proxy-agent's HttpsProxyAgent as the agent of
// the WebSocket. Both tunnel through the proxy with CONNECT, whatever the target's scheme. Each
// library is imported only when a proxy applies: a runner without one never loads them.
import type { Agent } from "node:http";
import type { Socket } from "node:net";
import type { ProxyChoice } from "./proxy.js";

/** What the HTTP client needs of a fetch: a subset that both Node's fetch and undici's satisfy. */
export type FetchLike = (
  url: URL,
  init: {
    method: string;
    headers: Record<string, string>;
    body: string | undefined;
    redirect: "manual";
    signal: AbortSignal;
  },
) => Promise<FetchAnswer>;

export interface FetchAnswer {
  status: number;
  ok: boolean;
  headers: { get(name: string): string | null };
  body: ReadableStream<Uint8Array> | null;
}

/**
 * A fetch through the proxy, and how to let go of its connections. Node's global fetch cannot
 * take undici's dispatcher (the bundled undici is another copy, of another version), so the
 * fetch is undici's too.
 */
export async function fetchThroughProxy(proxy: ProxyChoice): Promise<{ fetch: FetchLike; close: () => void }> {
  const undici = await import("undici");
  // The client that speaks to the proxy, kept to be destroyed first: ProxyAgent's destroy ends
  // its agent before this client, and the agent waits for a CONNECT still unanswered (undici
  // does not pass the request's abort on to it), so a request given up while a silent proxy
  // held its CONNECT kept that socket open for ever (seen on a loaded machine).
  const proxyClients: InstanceType<typeof undici.Pool>[] = [];
  const dispatcher = new undici.ProxyAgent({
    uri: proxy.url.href,
    token: proxyAuthorization(proxy.url),
    clientFactory: (origin, options) => {
      const client = new undici.Pool(origin, options);
      proxyClients.push(client);
      return client;
    },
  });
  return {
    fetch: async (url, init) => {
      const answer = await undici.fetch(url, { ...init, dispatcher });
      return {
        status: answer.status,
        ok: answer.ok,
        headers: answer.headers,
        body: answer.body as ReadableStream<Uint8Array> | null,
      };
    },
    // One request per agent (register, verify... are rare): its tunnel is closed after it.
    close: () => {
      for (const client of proxyClients) void client.destroy().catch(() => undefined);
      void dispatcher.destroy().catch(() => undefined);
    },
  };
}

/** The WebSocket's way through the proxy. */
export interface ChannelTunnel {
  /** The `agent` option of ws: it opens each connection with a CONNECT to the proxy. */
  agent: Agent;
  /** The proxy, redacted: for logs and errors. */
  proxy: string;
  /**
   * Tells `listener` the proxy's answer to each CONNECT until the returned function is called.
   * A status other than 200 is the proxy's own refusal, which ws would otherwise report as if
   * the control plane had answered it.
   */
  onConnectAnswer(listener: (status: number) => void): () => void;
}

/**
 * The channel's tunnel. `answerTimeoutMs` bounds the wait for the proxy's answer to each
 * CONNECT: https-proxy-agent alone waits for ever, and a proxy that accepts the connection but
 * never answers would keep one socket open per reconnect attempt (ws giving up on the
 * handshake does not reach a socket the agent has not handed over yet). Each CONNECT gets a
 * socket of its own, destroyed when the answer is late; a tunnel once opened is left alone.
 */
export async function channelTunnel(proxy: ProxyChoice, answerTimeoutMs: number): Promise<ChannelTunnel> {
  const { HttpsProxyAgent } = await import("https-proxy-agent");
  type ConnectArgs = Parameters<InstanceType<typeof HttpsProxyAgent<string>>["connect"]>;
  class BoundedProxyAgent extends HttpsProxyAgent<string> {
    override async connect(...[req, opts]: ConnectArgs): Promise<Socket> {
      const late = new AbortController();
      const timer = setTimeout(
        () => late.abort(new Error(`the proxy did not answer the CONNECT within ${answerTimeoutMs} ms`)),
        answerTimeoutMs,
      );
      // The abort signal goes to net.connect: it destroys the socket to the proxy, which fails
      // this attempt with the error above.
      const attempt = new HttpsProxyAgent(proxy.url, { signal: late.signal });
      attempt.on("proxyConnect", (connect: { statusCode: number }) => this.emit("proxyConnect", connect, req));
      try {
        return await attempt.connect(req, opts);
      } catch (error) {
        // Say why, rather than the bare AbortError of the destroyed socket.
        throw late.signal.aborted ? (late.signal.reason as Error) : error;
      } finally {
        clearTimeout(timer);
      }
    }
  }
  const agent = new BoundedProxyAgent(proxy.url);
  return {
    agent,
    proxy: proxy.redacted,
    onConnectAnswer(listener) {
      const onAnswer = (connect: { statusCode: number }) => listener(connect.statusCode);
      agent.on("proxyConnect", onAnswer);
      return () => agent.off("proxyConnect", onAnswer);
    },
  };
}

/**
 * Basic credentials from the proxy URL (percent-decoded), as https-proxy-agent sends them:
 * also when only a user name is given, which undici's own reading of the URL would drop.
 */
function proxyAuthorization(url: URL): string | undefined {
  if (url.username === "" && url.password === "") return undefined;
  const pair = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  return `Basic ${Buffer.from(pair).toString("base64")}`;
}
