// The replicas' bus on PostgreSQL (queue/replica-bus.ts): NOTIFY through the pool to publish,
// LISTEN on a dedicated connection to hear the others. The listening connection is not a
// pooled one: a pooled client is handed to other queries and LISTEN belongs to a session.
// Should it drop (the server restarted, a network cut), it reconnects with a capped
// exponential backoff and then asks for a resync: NOTIFY is not queued for a session that
// was not listening, so what was said meanwhile is read back from the tables instead.
import type { Client, Pool } from "pg";
import type { Logger } from "../../../log/logger.js";
import {
  REPLICA_CHANNEL,
  replicaEnvelopeSchema,
  type ReplicaBus,
  type ReplicaBusHandlers,
  type ReplicaSignal,
} from "../../queue/replica-bus.js";

const RECONNECT_FIRST_MS = 100;
const RECONNECT_MAX_MS = 5000;

export interface PostgresBusOptions {
  replicaId: string;
  /** Opens a new, unpooled client with the store's connection settings. */
  newClient: () => Client;
  pool: Pool;
  handlers: ReplicaBusHandlers;
  logger: Logger;
}

/** Resolves once the first LISTEN is in place, so no signal sent after start-up is missed. */
export async function openPostgresBus(options: PostgresBusOptions): Promise<ReplicaBus> {
  const { replicaId, pool, handlers, logger } = options;
  let closed = false;
  let client: Client | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  let delayMs = RECONNECT_FIRST_MS;

  const receive = (payload: string | undefined) => {
    let parsed: unknown;
    try {
      parsed = JSON.parse(payload ?? "");
    } catch {
      return logger.warn("replica notification is not JSON: ignored");
    }
    const envelope = replicaEnvelopeSchema.safeParse(parsed);
    if (!envelope.success) return logger.warn({ issue: envelope.error.issues[0]?.message }, "bad replica notification");
    if (envelope.data.from === replicaId) return;
    handlers.onSignal(envelope.data.signal);
  };

  const listen = async (): Promise<void> => {
    const next = options.newClient();
    // Errors end this client; the "end" handler below schedules the reconnect.
    next.on("error", (error) => logger.warn({ err: error }, "replica listener connection failed"));
    next.on("notification", (message) => {
      if (message.channel === REPLICA_CHANNEL) receive(message.payload);
    });
    try {
      await next.connect();
      await next.query(`LISTEN ${REPLICA_CHANNEL}`);
    } catch (error) {
      await next.end().catch(() => undefined);
      throw error;
    }
    next.once("end", () => {
      if (client === next) client = undefined;
      if (!closed) scheduleReconnect();
    });
    client = next;
  };

  const scheduleReconnect = () => {
    if (closed || retryTimer) return;
    logger.warn({ retryInMs: delayMs }, "replica listener disconnected: reconnecting");
    retryTimer = setTimeout(
      () => {
        retryTimer = undefined;
        listen().then(
          () => {
            delayMs = RECONNECT_FIRST_MS;
            logger.info("replica listener reconnected: resyncing");
            handlers.onResync();
          },
          (error: unknown) => {
            logger.warn({ err: error }, "replica listener could not reconnect");
            delayMs = Math.min(delayMs * 2, RECONNECT_MAX_MS);
            scheduleReconnect();
          },
        );
      },
      delayMs * (0.5 + Math.random() / 2),
    );
  };

  await listen();

  const notify = (signal: ReplicaSignal): Promise<void> =>
    pool.query("SELECT pg_notify($1, $2)", [REPLICA_CHANNEL, JSON.stringify({ from: replicaId, signal })]).then(
      () => undefined,
      (error: unknown) => logger.warn({ err: error, kind: signal.kind }, "replica notification failed"),
    );

  // `dispatch` says only "read the queue": a replica that hears it runs a pass over the whole
  // queue. So while one is on its way, those published meanwhile become ONE more, sent when it
  // is done: that one is still sent after each of their publishers' commits, which is all a
  // listener needs to see their jobs, and a burst of submits costs two NOTIFYs, not one each.
  // A notice carried by a submit's INSERT (carryDispatch) counts as one on its way too.
  let dispatchSending = false;
  let dispatchAgain = false;
  const dispatchSent = (): void => {
    if (dispatchAgain && !closed) {
      dispatchAgain = false;
      sendDispatch();
    } else dispatchSending = false;
  };
  const sendDispatch = (): void => {
    dispatchSending = true;
    void notify({ kind: "dispatch" }).finally(dispatchSent);
  };

  return {
    replicaId,
    publish(signal: ReplicaSignal) {
      if (closed) return;
      if (signal.kind !== "dispatch") return void notify(signal);
      if (dispatchSending) dispatchAgain = true;
      else sendDispatch();
    },
    carryDispatch() {
      if (closed || dispatchSending) return undefined;
      dispatchSending = true;
      let finished = false;
      return {
        channel: REPLICA_CHANNEL,
        payload: JSON.stringify({ from: replicaId, signal: { kind: "dispatch" } }),
        done: () => {
          if (finished) return;
          finished = true;
          dispatchSent();
        },
      };
    },
    async close() {
      closed = true;
      clearTimeout(retryTimer);
      await client?.end().catch(() => undefined);
    },
  };
}
