import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { MemoryRateLimitStore } from '../../src/stores/memory-rate-limit.js';

const WINDOW = 60_000;

function storeAt(clock: { now: number }, maxKeys = 1000): MemoryRateLimitStore {
  return new MemoryRateLimitStore(maxKeys, () => clock.now, 3_600_000);
}

describe('GCRA limiter', () => {
  it('admits a burst of L, refuses the next, and admits one more per W/L', () => {
    const clock = { now: 1_000_000 };
    const store = storeAt(clock);
    try {
      for (let i = 0; i < 5; i++) {
        const d = store.consumeNow('u', 5, WINDOW);
        assert.equal(d.allowed, true);
        assert.equal(d.remaining, 4 - i);
      }
      const refused = store.consumeNow('u', 5, WINDOW);
      assert.equal(refused.allowed, false);
      assert.equal(refused.retryAfterMs, 12_000);
      clock.now += 11_999;
      assert.equal(store.consumeNow('u', 5, WINDOW).allowed, false);
      clock.now += 1;
      assert.equal(store.consumeNow('u', 5, WINDOW).allowed, true);
      assert.equal(store.consumeNow('u', 5, WINDOW).allowed, false);
      assert.equal(store.consumeNow('other', 5, WINDOW).allowed, true, 'keys are independent');
    } finally {
      store.close();
    }
  });

  it('a burst straddling a fixed-window boundary gets L, not 2L', () => {
    const clock = { now: 59_999 };
    const store = storeAt(clock);
    try {
      let passed = 0;
      for (let i = 0; i < 100; i++) if (store.consumeNow('u', 10, WINDOW).allowed) passed++;
      clock.now = 60_001;
      for (let i = 0; i < 100; i++) if (store.consumeNow('u', 10, WINDOW).allowed) passed++;
      assert.equal(passed, 10);
    } finally {
      store.close();
    }
  });

  it('never admits more than L + floor(t * L / W) in any interval of length t (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 50 }),
        fc.array(fc.integer({ min: 0, max: 5_000 }), { minLength: 1, maxLength: 300 }),
        (limit, gaps) => {
          const clock = { now: 0 };
          const store = storeAt(clock);
          const admitted: number[] = [];
          try {
            for (const gap of gaps) {
              clock.now += gap;
              if (store.consumeNow('k', limit, WINDOW).allowed) admitted.push(clock.now);
            }
          } finally {
            store.close();
          }
          for (let i = 0; i < admitted.length; i++) {
            for (let j = i; j < admitted.length; j++) {
              const t = admitted[j]! - admitted[i]!;
              const count = j - i + 1;
              if (count > limit + Math.floor((t * limit) / WINDOW)) return false;
            }
          }
          return true;
        },
      ),
      { seed: 20261126, numRuns: 200 },
    );
  });

  it('stays bounded in keys: expired entries are swept and the least recently used go first', () => {
    const clock = { now: 0 };
    const store = storeAt(clock, 3);
    try {
      for (const k of ['a', 'b', 'c', 'd']) store.consumeNow(k, 10, WINDOW);
      assert.equal(store.size, 3);
      clock.now += WINDOW;
      store.sweep();
      assert.equal(store.size, 0);
    } finally {
      store.close();
    }
  });
});
