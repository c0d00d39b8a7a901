import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RetryBudget } from '../../src/upstream/retry-budget.js';

/** Takes retries at `now` until the budget refuses one (at most `cap`), and says how many it gave. */
function drain(budget: RetryBudget, now: number, cap = 10_000): number {
  let n = 0;
  while (n < cap && budget.tryRetry(now)) n++;
  return n;
}

function requests(budget: RetryBudget, now: number, n: number): void {
  for (let i = 0; i < n; i++) budget.request(now);
}

// The clock is the argument: milliseconds as performance.now() gives them. The tests start well
// past zero, as the gateway's clock does, so that the first call moves the ring forward.
const T0 = 1_000_000;

describe('RetryBudget', () => {
  it('keeps retries within the ratio of the requests of the last 10 s', () => {
    const budget = new RetryBudget(20, 0);
    // 10 requests a second for 10 seconds.
    for (let s = 0; s < 10; s++) requests(budget, T0 + s * 1_000 + 500, 10);
    assert.equal(drain(budget, T0 + 9_999), 20);
    assert.equal(budget.tryRetry(T0 + 9_999), false);
    // Each new request makes room for a fifth of a retry.
    requests(budget, T0 + 9_999, 4);
    assert.equal(budget.tryRetry(T0 + 9_999), false);
    requests(budget, T0 + 9_999, 1);
    assert.equal(drain(budget, T0 + 9_999), 1);
  });

  it('counts retries taken earlier in the window against the ratio', () => {
    const budget = new RetryBudget(50, 0);
    requests(budget, T0, 20);
    assert.equal(drain(budget, T0, 4), 4);
    requests(budget, T0 + 3_000, 20);
    // 40 requests allow 20 retries; 4 were taken 3 s ago.
    assert.equal(drain(budget, T0 + 3_000), 16);
  });

  it('with no room in the ratio still allows minRetriesPerSecond in each second', () => {
    const budget = new RetryBudget(20, 3);
    assert.equal(drain(budget, T0), 3, 'a quiet service can still retry');
    assert.equal(drain(budget, T0 + 999), 0, 'the same second');
    assert.equal(drain(budget, T0 + 1_000), 3, 'the next second');
    assert.equal(drain(budget, T0 + 1_500), 0);
  });

  it('treats the per-second minimum as a floor, not an addition to the ratio', () => {
    const budget = new RetryBudget(20, 3);
    requests(budget, T0, 10); // the ratio alone allows 2
    assert.equal(drain(budget, T0), 3);
    const busy = new RetryBudget(20, 3);
    requests(busy, T0, 100); // the ratio allows 20, well above the floor
    assert.equal(drain(busy, T0), 20);
  });

  it('forgets requests and retries older than the 10 s window as it slides', () => {
    const budget = new RetryBudget(20, 0);
    requests(budget, T0, 100);
    assert.equal(drain(budget, T0), 20);
    requests(budget, T0 + 5_000, 50);
    assert.equal(drain(budget, T0 + 5_000), 10, '150 requests in the window allow 30, 20 taken');
    // Ten seconds on, the first second's 100 requests and 20 retries are out of the window:
    // 50 requests and 10 retries are left, so nothing is free...
    assert.equal(budget.tryRetry(T0 + 10_000), false);
    // ...until 50 more requests: 100 in the window allow 20, 10 taken. (Had the old requests
    // stayed, 200 would allow 30 more; had the old retries stayed, none.)
    requests(budget, T0 + 10_000, 50);
    assert.equal(drain(budget, T0 + 10_000), 10);
    // Second 5 leaves the window too: 50 requests, 20 retries.
    assert.equal(budget.tryRetry(T0 + 15_000), false);
    // A gap longer than the window clears everything.
    assert.equal(budget.tryRetry(T0 + 60_000), false);
    requests(budget, T0 + 60_000, 5);
    assert.equal(drain(budget, T0 + 60_000), 1);
  });

  it('slides by whole seconds: requests at the end of a second count until that second leaves the window', () => {
    const budget = new RetryBudget(20, 0);
    requests(budget, T0 + 999, 10);
    // T0 + 999 is in second 1 000; it leaves the window when second 1 010 starts.
    assert.equal(drain(budget, T0 + 9_999), 2);
    const fresh = new RetryBudget(20, 0);
    requests(fresh, T0 + 999, 10);
    assert.equal(drain(fresh, T0 + 10_000), 0);
  });

  it('takes new settings at once (a reload)', () => {
    const budget = new RetryBudget(20, 0);
    requests(budget, T0, 100);
    assert.equal(drain(budget, T0), 20);
    budget.configure(50, 0);
    assert.equal(drain(budget, T0), 30);
    budget.configure(0, 2);
    assert.equal(drain(budget, T0 + 1_000), 2);
  });

  it('allows exactly budgetPercent% of the requests for every whole percent', () => {
    // "retries <= budgetPercent of requests" must hold in whole retries: 29% of 100 is 29, never
    // 28 because 0.29 x 100 is 28.999... in floating point.
    const wrong: string[] = [];
    for (let percent = 1; percent <= 100; percent++) {
      const budget = new RetryBudget(percent, 0);
      requests(budget, T0, 100);
      const got = drain(budget, T0);
      if (got !== percent) wrong.push(`${percent}%: ${got}`);
    }
    assert.deepEqual(wrong, [], 'retries allowed out of 100 requests');
  });
});
