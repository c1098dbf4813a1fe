// Reconnect delays: exponential with a cap and "equal jitter" (half fixed, half random), so a
// fleet of browsers that lost the same edge does not come back in one wave, yet no client
// retries at once in a tight loop.

export interface BackoffOptions {
  /** First delay's upper bound, milliseconds. */
  baseMs?: number;
  /** Largest delay, milliseconds. */
  maxMs?: number;
  /** A number in [0, 1); Math.random unless a test passes its own. */
  random?: () => number;
}

export class Backoff {
  private attempt = 0;
  private readonly baseMs: number;
  private readonly maxMs: number;
  private readonly random: () => number;

  constructor(opts: BackoffOptions = {}) {
    this.baseMs = opts.baseMs ?? 500;
    this.maxMs = opts.maxMs ?? 20_000;
    this.random = opts.random ?? Math.random;
  }

  /** The delay before the next attempt; each call counts one more failure. */
  next(): number {
    const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    const half = ceiling / 2;
    return Math.round(half + this.random() * half);
  }

  /** A connection worked: start again from the first delay. */
  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}
