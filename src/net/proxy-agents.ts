// The thin drivers of a proxy decision (net/proxy.ts): undici's ProxyAgent as the dispatcher of
// undici's own fetch, for the HTTP API, and https-proxy-agent's HttpsProxyAgent as the agent of
// the WebSocket. Both tunnel through the proxy with CONNECT, whatever the target's scheme. Each
// library is imported only when a proxy applies: a runner without one never loads them.
import type { Agent } from "node:http";
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
  const dispatcher = new undici.ProxyAgent({ uri: proxy.url.href, token: proxyAuthorization(proxy.url) });
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
    close: () => void dispatcher.destroy().catch(() => undefined),
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

export async function channelTunnel(proxy: ProxyChoice): Promise<ChannelTunnel> {
  const { HttpsProxyAgent } = await import("https-proxy-agent");
  const agent = new HttpsProxyAgent(proxy.url);
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
