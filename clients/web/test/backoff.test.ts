import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff } from "../src/backoff.js";
import { Deduper } from "../src/dedupe.js";

test("backoff doubles up to its cap, jittered within the upper half", () => {
  const lo = new Backoff({ baseMs: 100, maxMs: 1000, random: () => 0 });
  const hi = new Backoff({ baseMs: 100, maxMs: 1000, random: () => 0.999999 });
  const lows = Array.from({ length: 7 }, () => lo.next());
  const highs = Array.from({ length: 7 }, () => hi.next());
  assert.deepEqual(lows, [50, 100, 200, 400, 500, 500, 500]);
  assert.deepEqual(highs, [100, 200, 400, 800, 1000, 1000, 1000]);
});

test("backoff jitter spreads clients apart and reset starts over", () => {
  let r = 0;
  const seq = [0.1, 0.7, 0.4];
  const b = new Backoff({ baseMs: 1000, maxMs: 60_000, random: () => seq[r++ % seq.length]! });
  const a = [b.next(), b.next(), b.next()];
  assert.deepEqual(a, [550, 1700, 2800]);
  assert.equal(b.attempts, 3);
  b.reset();
  assert.equal(b.attempts, 0);
  assert.ok(b.next() <= 1000);
  // With Math.random, many clients' first delays are not all the same.
  const firsts = new Set(Array.from({ length: 50 }, () => new Backoff({ baseMs: 1000 }).next()));
  assert.ok(firsts.size > 1);
});

test("dedupe admits an id once and forgets the oldest beyond its capacity", () => {
  const d = new Deduper(3);
  assert.equal(d.admit(1n), true);
  assert.equal(d.admit(1n), false);
  assert.equal(d.admit("1"), false);
  d.admit(2n);
  d.admit(3n);
  d.admit(4n);
  assert.equal(d.size, 3);
  assert.equal(d.has(1n), false);
  assert.equal(d.admit(4n), false);
});
