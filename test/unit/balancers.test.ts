import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConsistentHash } from '../../src/upstream/balancers/consistent-hash.js';
import { LeastRequest } from '../../src/upstream/balancers/least-request.js';
import { RoundRobin } from '../../src/upstream/balancers/round-robin.js';
import { WeightedRoundRobin } from '../../src/upstream/balancers/weighted-round-robin.js';
import { Instance } from '../../src/upstream/instance.js';

/** Each balancing policy alone, over plain instances (no pools are opened: nothing is sent). */

const NOW = 1_000;

function instances(weights: number[]): Instance[] {
  return weights.map((w, i) => new Instance(`http://10.0.1.${i + 1}:9000`, w));
}

const names = (list: ReadonlyArray<Instance | null>, all: readonly Instance[]) => list.map((i) => (i === null ? '-' : String.fromCharCode(97 + all.indexOf(i)))).join('');

describe('balancers: round robin', () => {
  it('takes each instance in turn and skips the ones out of rotation or already tried', () => {
    const list = instances([1, 1, 1]);
    const rr = new RoundRobin();
    assert.equal(names(Array.from({ length: 6 }, () => rr.pick(list, undefined, NOW, null)), list), 'abcabc');
    list[1]!.healthy = false;
    assert.equal(names(Array.from({ length: 4 }, () => rr.pick(list, undefined, NOW, null)), list), 'acac');
    assert.equal(rr.pick(list, undefined, NOW, [list[0]!, list[2]!]), null);
  });
});

describe('balancers: smooth weighted round robin', () => {
  it("follows nginx's sequence for weights 5, 1, 1: no burst of five to one instance", () => {
    const list = instances([5, 1, 1]);
    const wrr = new WeightedRoundRobin();
    assert.equal(names(Array.from({ length: 7 }, () => wrr.pick(list, undefined, NOW, null)), list), 'aabacaa');
  });
});

describe('balancers: least request', () => {
  it('of two random choices, takes the one with fewer requests in flight per unit of weight', () => {
    const list = instances([1, 1, 2]);
    list[0]!.active = 5;
    list[1]!.active = 1;
    list[2]!.active = 3;
    // The random source picks a, then b (then a and c for the second call).
    const draws = [0, 0.34, 0, 0.67];
    const lr = new LeastRequest(() => draws.shift()!);
    assert.equal(lr.pick(list, undefined, NOW, null), list[1]);
    assert.equal(lr.pick(list, undefined, NOW, null), list[2], 'c: 3 in flight at weight 2 beats a: 5 at weight 1');
  });

  it('with one eligible instance, takes it; with none, null', () => {
    const list = instances([1, 1]);
    list[0]!.ejectedUntil = NOW + 10_000;
    const lr = new LeastRequest();
    assert.equal(lr.pick(list, undefined, NOW, null), list[1]);
    assert.equal(lr.pick(list, undefined, NOW, [list[1]!]), null);
  });
});

describe('balancers: consistent hash (rendezvous)', () => {
  const keys = Array.from({ length: 1_000 }, (_, i) => `patient-${i}`);

  it('keeps each key on its instance, and moves only the keys of an instance that leaves rotation', () => {
    const list = instances([1, 1, 1, 1]);
    const ch = new ConsistentHash();
    const before = new Map(keys.map((k) => [k, ch.pick(list, k, NOW, null)]));
    assert.ok(keys.every((k) => ch.pick(list, k, NOW, null) === before.get(k)), 'stable');
    list[2]!.healthy = false;
    for (const k of keys) {
      const now = ch.pick(list, k, NOW, null);
      if (before.get(k) !== list[2]) assert.equal(now, before.get(k), `${k} stayed`);
      else assert.notEqual(now, list[2]);
    }
    const spread = new Map<Instance | null, number>();
    for (const v of before.values()) spread.set(v, (spread.get(v) ?? 0) + 1);
    for (const n of spread.values()) assert.ok(n > 180 && n < 320, `an even spread: ${[...spread.values()].join(', ')}`);
  });
});
