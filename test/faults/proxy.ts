// A loopback TCP proxy between the runner and the control plane that injects the faults of a
// network: latency (every chunk held back `delayMs`, order kept), a cut (every connection
// destroyed at once, as a crashed middlebox does), and a black hole (bytes of existing
// connections dropped for ever, as when a NAT forgets the flow; new connections either
// refused, or accepted and left silent: the attempt hangs as a SYN into a black hole does).
import net from "node:net";

export type NewConnectionsInHole = "refuse" | "hang";

export class FaultProxy {
  private readonly sockets = new Set<net.Socket>();
  private hole: NewConnectionsInHole | null = null;
  /** Each connection's "dead" switch: a black hole kills the flows that exist when it starts. */
  private readonly flows = new Set<{ dead: boolean }>();
  private delayMs = 0;
  private readonly acceptWaiters: (() => void)[] = [];
  /** Connections accepted so far (refused ones included). */
  accepted = 0;

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
  ) {}

  static async start(targetPort: () => number): Promise<FaultProxy> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const proxy = new FaultProxy(server, (server.address() as net.AddressInfo).port);
    server.on("connection", (client) => proxy.accept(client, targetPort()));
    return proxy;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Adds `ms` of latency to every chunk from now on (0: none). */
  setDelay(ms: number): void {
    this.delayMs = ms;
  }

  /** Destroys every connection at once (both sides see a reset). */
  cut(): number {
    const count = this.sockets.size;
    for (const socket of this.sockets) socket.destroy();
    return count;
  }

  blackhole(newConnections: NewConnectionsInHole): void {
    this.hole = newConnections;
    for (const flow of this.flows) flow.dead = true;
  }

  resume(): void {
    this.hole = null;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private track(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("error", () => undefined);
  }

  /** Resolves at the next connection the proxy accepts (e.g. an attempt into the black hole). */
  nextConnection(): Promise<void> {
    return new Promise((resolve) => this.acceptWaiters.push(resolve));
  }

  private accept(client: net.Socket, targetPort: number): void {
    this.accepted++;
    for (const wake of this.acceptWaiters.splice(0)) wake();
    this.track(client);
    if (this.hole === "refuse") return void client.destroy();
    const flow = { dead: this.hole === "hang" };
    this.flows.add(flow);
    client.on("close", () => this.flows.delete(flow));
    if (flow.dead) return void client.resume();
    const upstream = net.connect(targetPort, "127.0.0.1");
    this.track(upstream);
    const forward = (to: net.Socket) => {
      const delayed = new DelayedPipe(to, flow);
      return (chunk: Buffer) => delayed.push(chunk, this.delayMs);
    };
    client.on("data", forward(upstream));
    upstream.on("data", forward(client));
    // A dead flow stays open and silent: neither side may learn of the hole from a FIN.
    client.on("end", () => !flow.dead && upstream.end());
    upstream.on("end", () => !flow.dead && client.end());
    client.on("close", () => !flow.dead && upstream.destroy());
    upstream.on("close", () => !flow.dead && client.destroy());
  }
}

/** One direction of a flow: chunks leave in order, none before its delay is over. */
class DelayedPipe {
  private readonly queue: { at: number; chunk: Buffer }[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly to: net.Socket,
    private readonly flow: { dead: boolean },
  ) {}

  push(chunk: Buffer, delayMs: number): void {
    if (this.flow.dead) return;
    if (delayMs === 0 && this.queue.length === 0) return void this.to.write(chunk);
    // A chunk never overtakes an earlier one, even when the delay was lowered in between.
    const at = Math.max(performance.now() + delayMs, this.queue.at(-1)?.at ?? 0);
    this.queue.push({ at, chunk });
    this.schedule();
  }

  private schedule(): void {
    const head = this.queue[0];
    if (this.timer !== undefined || head === undefined) return;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        while (this.queue[0] !== undefined && this.queue[0].at <= performance.now()) {
          const { chunk } = this.queue.shift()!;
          if (!this.flow.dead && !this.to.destroyed) this.to.write(chunk);
        }
        this.schedule();
      },
      Math.max(0, head.at - performance.now()),
    );
  }
}
