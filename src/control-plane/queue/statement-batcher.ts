// Group commit for the transitions runners report (started, result): hundreds of runners
// report at once, and one conditional UPDATE per report makes each wait its turn for a pooled
// connection. A batcher sends the first call at once (no added latency when the control plane
// is quiet); calls made while that statement runs wait and go together as ONE statement when
// it returns, each row still under its own conditions (the batch is an UPDATE … FROM VALUES
// whose WHERE clause is the single call's). A job appears at most once in a batch, so each
// caller learns from the returned row for its job whether its own transition happened.

interface Pending<Item, Row> {
  item: Item;
  resolve(row: Row | undefined): void;
  reject(error: unknown): void;
}

export class StatementBatcher<Item, Row> {
  private running = false;
  /** The next batch, one call per job; a second call about a job already here waits in `later`. */
  private next = new Map<string, Pending<Item, Row>>();
  private later: Pending<Item, Row>[] = [];

  /**
   * @param keyOf the job an item is about
   * @param run the batch statement: the rows it changed, each found again by `rowKey`
   * @param maxBatch at most this many items in one statement (its parameters stay few)
   */
  constructor(
    private readonly keyOf: (item: Item) => string,
    private readonly rowKey: (row: Row) => string,
    private readonly run: (items: Item[]) => Promise<Row[]>,
    private readonly maxBatch: number,
  ) {}

  /** The row the item's transition changed, or undefined when its conditions did not hold. */
  submit(item: Item): Promise<Row | undefined> {
    return new Promise<Row | undefined>((resolve, reject) => {
      const pending = { item, resolve, reject };
      const key = this.keyOf(item);
      if (this.next.has(key) || this.next.size >= this.maxBatch) this.later.push(pending);
      else this.next.set(key, pending);
      if (!this.running) void this.flush();
    });
  }

  private async flush(): Promise<void> {
    this.running = true;
    while (this.next.size > 0) {
      const batch = [...this.next.values()];
      this.next = new Map();
      // What waited for lack of room or for a job already in the batch moves up, in order.
      const waiting = this.later;
      this.later = [];
      for (const pending of waiting) {
        const key = this.keyOf(pending.item);
        if (this.next.has(key) || this.next.size >= this.maxBatch) this.later.push(pending);
        else this.next.set(key, pending);
      }
      try {
        const rows = new Map((await this.run(batch.map((p) => p.item))).map((row) => [this.rowKey(row), row]));
        for (const pending of batch) pending.resolve(rows.get(this.keyOf(pending.item)));
      } catch (error) {
        for (const pending of batch) pending.reject(error);
      }
    }
    this.running = false;
  }
}
