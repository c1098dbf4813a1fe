// Remembers the ids of the messages already handed to the app, so a message that comes twice
// (a push and the SYNC after a reconnect, or a push on a transport that replays) is shown once.
// Bounded: the oldest ids are forgotten first.

export class Deduper {
  private readonly seen = new Set<string>();

  constructor(private readonly capacity = 10_000) {}

  /** True the first time `id` is offered, false after. */
  admit(id: bigint | string): boolean {
    const key = String(id);
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    if (this.seen.size > this.capacity) {
      const oldest = this.seen.values().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    return true;
  }

  has(id: bigint | string): boolean {
    return this.seen.has(String(id));
  }

  get size(): number {
    return this.seen.size;
  }
}
