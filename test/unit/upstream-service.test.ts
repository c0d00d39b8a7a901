import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { serviceSchema } from '../../src/upstream/service-schema.js';
import { createLoggers } from '../../src/observability/logger.js';
import type { Instance } from '../../src/upstream/instance.js';
import { UpstreamService } from '../../src/upstream/service.js';
import { LogCapture } from '../helpers/gateway.js';

const silent = createLoggers('ERROR').log;

/** A service configured from a routes-file fragment, exactly as the gateway parses it. */
function makeService(config: Record<string, unknown>, capture?: LogCapture): UpstreamService {
  const svc = new UpstreamService('backend', capture === undefined ? silent : createLoggers('INFO', capture).log);
  svc.configure(serviceSchema.parse(config));
  return svc;
}

const origins = (n: number, base = 9000) => Array.from({ length: n }, (_, i) => `http://10.0.0.${i + 1}:${base}`);

function counts(picks: ReadonlyArray<Instance | null>): Map<string, number> {
  const out = new Map<string, number>();
  for (const p of picks) {
    assert.ok(p !== null, 'every pick finds an instance');
    out.set(p.origin, (out.get(p.origin) ?? 0) + 1);
  }
  return out;
}

function picks(svc: UpstreamService, n: number, now = 1_000, key?: string): Array<Instance | null> {
  return Array.from({ length: n }, () => svc.pick(key, now, null));
}

/** The origin each key maps to. */
function placement(svc: UpstreamService, keys: readonly string[], now = 1_000): Map<string, string> {
  return new Map(keys.map((k) => [k, svc.pick(k, now, null)!.origin]));
}

const KEYS = Array.from({ length: 2_000 }, (_, i) => `patient-${i}`);

describe('UpstreamService: round robin', () => {
  it('spreads picks evenly and in a fixed cycle', () => {
    const svc = makeService({ instances: origins(3) });
    const seq = picks(svc, 300);
    assert.deepEqual(
      [...counts(seq).values()],
      [100, 100, 100],
    );
    // Strict rotation: every pick differs from the previous one and the cycle repeats every 3.
    for (let i = 3; i < seq.length; i++) assert.equal(seq[i], seq[i - 3]);
    assert.equal(new Set(seq.slice(0, 3)).size, 3);
  });

  it('skips instances out of rotation and keeps the others even', () => {
    const svc = makeService({ instances: origins(3) });
    const [a, b, c] = svc.instances;
    b!.healthy = false;
    const seq = picks(svc, 200);
    assert.ok(!seq.includes(b!));
    assert.equal(seq.filter((p) => p === a).length, 100);
    assert.equal(seq.filter((p) => p === c).length, 100);
  });
});

describe('UpstreamService: smooth weighted round robin', () => {
  const weighted = () =>
    makeService({
      instances: [
        { url: 'http://10.0.0.1:9000', weight: 1 },
        { url: 'http://10.0.0.2:9000', weight: 2 },
        { url: 'http://10.0.0.3:9000', weight: 3 },
      ],
    });

  it('gives weights 1/2/3 exactly 100/200/300 of 600 picks', () => {
    const svc = weighted();
    const seq = picks(svc, 600);
    const c = counts(seq);
    assert.equal(c.get('http://10.0.0.1:9000'), 100);
    assert.equal(c.get('http://10.0.0.2:9000'), 200);
    assert.equal(c.get('http://10.0.0.3:9000'), 300);
  });

  it('interleaves instead of bursting: every 6 consecutive picks hold each instance weight times, runs of at most 1/1/2', () => {
    const svc = weighted();
    const seq = picks(svc, 600).map((p) => p!.weight);
    // nginx's smooth WRR over 1/2/3 repeats the period 3,2,1,3,2,3: the only run is the weight-3
    // instance twice, across the end of one period and the start of the next.
    assert.deepEqual(seq.slice(0, 6), [3, 2, 1, 3, 2, 3]);
    const longest = new Map<number, number>();
    let run = 0;
    for (let i = 0; i < seq.length; i++) {
      run = i > 0 && seq[i] === seq[i - 1] ? run + 1 : 1;
      longest.set(seq[i]!, Math.max(longest.get(seq[i]!) ?? 0, run));
    }
    assert.deepEqual(Object.fromEntries(longest), { 1: 1, 2: 1, 3: 2 });
    for (let start = 0; start + 6 <= seq.length; start++) {
      const window = seq.slice(start, start + 6);
      for (const w of [1, 2, 3]) assert.equal(window.filter((x) => x === w).length, w, `window at ${start}: ${window.join(',')}`);
    }
  });

  it('bounds a heavy instance\'s runs by its weight (5/1/1 -> at most 4 in a row, 5 of every 7)', () => {
    const svc = makeService({
      instances: [{ url: 'http://10.0.0.1:9000', weight: 5 }, 'http://10.0.0.2:9000', 'http://10.0.0.3:9000'],
    });
    const seq = picks(svc, 700).map((p) => p!.origin);
    let run = 1;
    let longest = 1;
    for (let i = 1; i < seq.length; i++) {
      run = seq[i] === seq[i - 1] ? run + 1 : 1;
      longest = Math.max(longest, run);
    }
    assert.ok(longest <= 4, `a run of ${longest}`);
    for (let start = 0; start + 7 <= seq.length; start += 7) {
      assert.equal(seq.slice(start, start + 7).filter((o) => o === 'http://10.0.0.1:9000').length, 5);
    }
  });

  it('keeps the proportions among the instances left when one is out of rotation', () => {
    const svc = weighted();
    svc.instances[1]!.ejectedUntil = 5_000;
    const c = counts(picks(svc, 400, 1_000));
    assert.equal(c.get('http://10.0.0.1:9000'), 100);
    assert.equal(c.get('http://10.0.0.2:9000'), undefined);
    assert.equal(c.get('http://10.0.0.3:9000'), 300);
  });
});

describe('UpstreamService: least-request', () => {
  it('with two instances always takes the one with fewer requests in flight', () => {
    const svc = makeService({ instances: origins(2), balancer: 'least-request' });
    const [a, b] = svc.instances;
    a!.active = 5;
    b!.active = 1;
    assert.ok(picks(svc, 200).every((p) => p === b));
    b!.active = 7;
    assert.ok(picks(svc, 200).every((p) => p === a));
  });

  it('with three instances never takes the busiest and takes the idle one most', () => {
    const svc = makeService({ instances: origins(3), balancer: 'least-request' });
    const [busy, idle, middle] = svc.instances;
    busy!.active = 10;
    idle!.active = 0;
    middle!.active = 5;
    const seq = picks(svc, 600);
    const idleCount = seq.filter((p) => p === idle).length;
    const middleCount = seq.filter((p) => p === middle).length;
    assert.equal(seq.filter((p) => p === busy).length, 0);
    // Two random choices: the idle one wins every pair it is in (2/3 of them), the middle one the rest.
    assert.ok(idleCount > middleCount, `idle ${idleCount}, middle ${middleCount}`);
    assert.equal(idleCount + middleCount, 600);
  });

  it('weighs requests in flight by the instance weight', () => {
    const svc = makeService({ instances: [{ url: 'http://10.0.0.1:9000', weight: 4 }, 'http://10.0.0.2:9000'], balancer: 'least-request' });
    const [big, small] = svc.instances;
    big!.active = 6; // 1.5 per unit of weight
    small!.active = 2; // 2 per unit of weight
    assert.ok(picks(svc, 100).every((p) => p === big));
  });

  it('skips instances out of rotation', () => {
    const svc = makeService({ instances: origins(3), balancer: 'least-request' });
    const [a, b, c] = svc.instances;
    a!.healthy = false;
    b!.active = 100;
    const seq = picks(svc, 200);
    assert.ok(!seq.includes(a!));
    assert.ok(seq.includes(b!) || seq.includes(c!));
    assert.ok(seq.filter((p) => p === c).length > seq.filter((p) => p === b).length);
  });
});

describe('UpstreamService: consistent hashing', () => {
  const hashed = (n = 4) => makeService({ instances: origins(n), balancer: 'consistent-hash', hashOn: { header: 'X-Patient-Id' } });

  it('maps the same key to the same instance every time', () => {
    const svc = hashed();
    const first = placement(svc, KEYS);
    for (let round = 0; round < 3; round++) assert.deepEqual(placement(svc, KEYS), first);
    // Interleaved with other keys, and in another service object built from the same config.
    const other = hashed();
    for (const k of KEYS) {
      assert.ok(other.pick(`noise-${k}`, 1_000, null));
      assert.equal(other.pick(k, 1_000, null)!.origin, first.get(k));
    }
  });

  it('spreads keys over all instances', () => {
    const svc = hashed(4);
    const perInstance = new Map<string, number>();
    for (const origin of placement(svc, KEYS).values()) perInstance.set(origin, (perInstance.get(origin) ?? 0) + 1);
    assert.equal(perInstance.size, 4);
    // 500 expected each: far from the bound unless the hash clusters.
    for (const [origin, n] of perInstance) assert.ok(n > 350 && n < 650, `${origin} got ${n} of ${KEYS.length} keys`);
  });

  it('honours weights (3:1 -> about 3/4 of the keys)', () => {
    const svc = makeService({ instances: [{ url: 'http://10.0.0.1:9000', weight: 3 }, 'http://10.0.0.2:9000'], balancer: 'consistent-hash', hashOn: 'user' });
    const heavy = [...placement(svc, KEYS).values()].filter((o) => o === 'http://10.0.0.1:9000').length;
    assert.ok(heavy > 1_350 && heavy < 1_650, `${heavy} of ${KEYS.length}`);
  });

  it('moves only the removed instance\'s keys when membership changes, and they come back with it', () => {
    const svc = hashed(4);
    const before = placement(svc, KEYS);
    const all = origins(4);
    const gone = all[2]!;
    svc.setInstances(all.filter((o) => o !== gone).map((origin) => ({ origin, weight: 1 })));
    const after = placement(svc, KEYS);
    let moved = 0;
    const landed = new Set<string>();
    for (const k of KEYS) {
      if (before.get(k) === gone) {
        assert.notEqual(after.get(k), gone);
        landed.add(after.get(k)!);
        moved++;
      } else assert.equal(after.get(k), before.get(k), `key ${k} moved although its instance stayed`);
    }
    assert.ok(moved > 0);
    assert.equal(landed.size, 3, 'the keys of the removed instance spread over the others');
    svc.setInstances(all.map((origin) => ({ origin, weight: 1 })));
    assert.deepEqual(placement(svc, KEYS), before);
  });

  it('sends an out-of-rotation instance\'s keys elsewhere and only those', () => {
    const svc = hashed(4);
    const before = placement(svc, KEYS);
    const out = svc.instances[1]!;
    for (const how of ['unhealthy', 'ejected'] as const) {
      if (how === 'unhealthy') out.healthy = false;
      else out.ejectedUntil = 2_000;
      const during = placement(svc, KEYS, 1_000);
      for (const k of KEYS) {
        if (before.get(k) === out.origin) assert.notEqual(during.get(k), out.origin);
        else assert.equal(during.get(k), before.get(k));
      }
      out.healthy = true;
      if (how === 'ejected') {
        // The ejection is over at 2 000: the keys are back without anything else happening.
        assert.deepEqual(placement(svc, KEYS, 2_001), before);
      } else assert.deepEqual(placement(svc, KEYS), before);
    }
  });

  it('falls back to round robin for a request without a key', () => {
    const svc = hashed(4);
    const c = counts([...picks(svc, 400, 1_000, undefined), ...picks(svc, 400, 1_000, '')]);
    assert.deepEqual([...c.values()], [200, 200, 200, 200]);
  });
});

describe('UpstreamService: tried instances', () => {
  for (const balancer of ['round-robin', 'least-request', 'consistent-hash'] as const) {
    it(`${balancer} never picks an instance already tried`, () => {
      const svc = makeService({ instances: origins(3), balancer, ...(balancer === 'consistent-hash' ? { hashOn: 'user' } : {}) });
      const [a, b, c] = svc.instances;
      for (let i = 0; i < 100; i++) {
        const key = `user-${i}`;
        const first = svc.pick(key, 1_000, [])!;
        const second = svc.pick(key, 1_000, [first])!;
        assert.notEqual(second, first);
        const third = svc.pick(key, 1_000, [first, second])!;
        assert.ok(third !== first && third !== second);
        assert.equal(svc.pick(key, 1_000, [a!, b!, c!]), null);
      }
      // Tried and out of rotation together leave nothing.
      c!.healthy = false;
      assert.equal(svc.pick('user-1', 1_000, [a!, b!]), null);
    });
  }

  it('a single instance already tried, or out of rotation, gives null', () => {
    const svc = makeService({ instances: origins(1) });
    const only = svc.instances[0]!;
    assert.equal(svc.pick(undefined, 1_000, null), only);
    assert.equal(svc.pick(undefined, 1_000, []), only);
    assert.equal(svc.pick(undefined, 1_000, [only]), null);
    only.healthy = false;
    assert.equal(svc.pick(undefined, 1_000, null), null);
  });

  it('an empty service gives null', () => {
    const svc = makeService({ discovery: { host: 'backend.local', port: 80 } });
    assert.equal(svc.pick(undefined, 1_000, null), null);
  });
});

describe('UpstreamService: outlier ejection', () => {
  const outlier = { consecutiveFailures: 3, baseEjectionMs: 1_000, maxEjectionMs: 2_500, maxEjectedPercent: 50 };

  it('ejects after N consecutive failures, and a success in between starts the count over', () => {
    const capture = new LogCapture();
    const svc = makeService({ instances: origins(4), outlierDetection: outlier }, capture);
    const inst = svc.instances[0]!;
    svc.failed(inst, 'connect', 100);
    svc.failed(inst, 'status', 100);
    svc.succeeded(inst);
    svc.failed(inst, 'reset', 100);
    svc.failed(inst, 'timeout', 100);
    assert.equal(inst.ejectedUntil, 0, 'four failures, but not three in a row');
    assert.equal(inst.unavailable(100), false);
    svc.failed(inst, 'status', 100);
    assert.equal(inst.ejectedUntil, 1_100);
    assert.equal(inst.ejections, 1);
    assert.equal(inst.unavailable(1_099), true);
    assert.equal(inst.unavailable(1_100), false, 'back in rotation when the ejection ends');
    assert.deepEqual(inst.failures, { connect: 1, reset: 1, timeout: 1, status: 2 });
    const warns = capture.messages('WARN', 'upstream instance ejected');
    assert.equal(warns.length, 1);
    assert.equal(warns[0]!.instance, inst.origin);
    // One service field per line, the gateway's: the upstream's is named apart, so that a JSON
    // parser keeping the last of two keys does not attribute the line to the upstream.
    assert.equal(warns[0]!.service, 'api-gateway');
    assert.equal(warns[0]!.upstream_service, 'backend');
    for (const line of capture.text) assert.equal(line.split('"service":').length, 2, `one service field in ${line}`);
    assert.equal(warns[0]!.ejected_ms, 1_000);
    // The ejected instance is not picked.
    for (let i = 0; i < 50; i++) assert.notEqual(svc.pick(undefined, 500, null), inst);
  });

  it('does not extend an ejection with failures during it', () => {
    const svc = makeService({ instances: origins(4), outlierDetection: outlier });
    const inst = svc.instances[0]!;
    for (let i = 0; i < 3; i++) svc.failed(inst, 'connect', 0);
    assert.equal(inst.ejectedUntil, 1_000);
    for (let i = 0; i < 10; i++) svc.failed(inst, 'connect', 500);
    assert.equal(inst.ejectedUntil, 1_000);
    assert.equal(inst.ejections, 1);
  });

  it('grows the ejection with each repeat, up to maxEjectionMs', () => {
    const capture = new LogCapture();
    const svc = makeService({ instances: origins(4), outlierDetection: outlier }, capture);
    const inst = svc.instances[0]!;
    let now = 0;
    const durations: number[] = [];
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 3; i++) svc.failed(inst, 'status', now);
      durations.push(inst.ejectedUntil - now);
      now = inst.ejectedUntil; // fails again as soon as it is back
    }
    assert.deepEqual(durations, [1_000, 2_000, 2_500, 2_500, 2_500]);
    assert.deepEqual(
      capture.messages('WARN', 'upstream instance ejected').map((l) => l.ejected_ms),
      [1_000, 2_000, 2_500, 2_500, 2_500],
    );
  });

  it('starts the back-off over after a quiet spell longer than maxEjectionMs', () => {
    const svc = makeService({ instances: origins(4), outlierDetection: outlier });
    const inst = svc.instances[0]!;
    for (let i = 0; i < 3; i++) svc.failed(inst, 'status', 0);
    for (let i = 0; i < 3; i++) svc.failed(inst, 'status', 1_000);
    assert.equal(inst.ejectedUntil, 3_000);
    const later = 3_000 + 2_501;
    for (let i = 0; i < 3; i++) svc.failed(inst, 'status', later);
    assert.equal(inst.ejectedUntil - later, 1_000);
  });

  it('never ejects when outlier detection is off', () => {
    const svc = makeService({ instances: origins(4), outlierDetection: false });
    const inst = svc.instances[0]!;
    for (let i = 0; i < 100; i++) svc.failed(inst, 'connect', 0);
    assert.equal(inst.ejectedUntil, 0);
    assert.equal(inst.failures.connect, 100);
  });
});

describe('UpstreamService: panic threshold', () => {
  it('never ejects the only instance of a service', () => {
    const capture = new LogCapture();
    const svc = makeService({ instances: origins(1), outlierDetection: { consecutiveFailures: 1 } }, capture);
    const only = svc.instances[0]!;
    for (let i = 0; i < 50; i++) svc.failed(only, 'connect', i);
    assert.equal(only.ejectedUntil, 0);
    assert.equal(svc.pick(undefined, 100, null), only);
    assert.equal(capture.messages('WARN', 'upstream instance ejected').length, 0);
  });

  it('with 4 instances and 50% keeps at most 2 out, counting unhealthy ones, and ejects again once one is back', () => {
    const svc = makeService({ instances: origins(4), outlierDetection: { consecutiveFailures: 2, baseEjectionMs: 1_000, maxEjectedPercent: 50 } });
    const [a, b, c, d] = svc.instances;
    const failTwice = (inst: Instance, now: number) => {
      svc.failed(inst, 'connect', now);
      svc.failed(inst, 'connect', now);
    };
    failTwice(a!, 0);
    failTwice(b!, 0);
    assert.equal(svc.counts(0).healthy, 2);
    for (let i = 0; i < 10; i++) failTwice(c!, 10);
    failTwice(d!, 10);
    assert.equal(c!.ejectedUntil, 0);
    assert.equal(d!.ejectedUntil, 0);
    assert.deepEqual(svc.counts(10), { healthy: 2, total: 4 });
    // a and b are back at 1 000: c and d may go now, and then a may not go again.
    failTwice(c!, 1_000);
    assert.equal(c!.ejectedUntil, 2_000);
    failTwice(d!, 1_000);
    assert.equal(d!.ejectedUntil, 2_000);
    failTwice(a!, 1_000);
    failTwice(b!, 1_000);
    assert.equal(a!.unavailable(1_000), false);
    assert.equal(b!.unavailable(1_000), false);
    assert.deepEqual(svc.counts(1_000), { healthy: 2, total: 4 });
    // An instance the health checks took out counts towards the threshold too.
    const other = makeService({ instances: origins(4), outlierDetection: { consecutiveFailures: 2, maxEjectedPercent: 50 } });
    const [p, q, r] = other.instances;
    p!.healthy = false;
    other.failed(q!, 'connect', 0);
    other.failed(q!, 'connect', 0);
    assert.ok(q!.ejectedUntil > 0);
    other.failed(r!, 'connect', 0);
    other.failed(r!, 'connect', 0);
    assert.equal(r!.ejectedUntil, 0);
  });

  it('with maxEjectedPercent 0 ejects nothing', () => {
    const svc = makeService({ instances: origins(4), outlierDetection: { consecutiveFailures: 1, maxEjectedPercent: 0 } });
    for (const inst of svc.instances) svc.failed(inst, 'status', 0);
    assert.deepEqual(svc.counts(0), { healthy: 4, total: 4 });
  });
});

describe('UpstreamService: active health check verdicts', () => {
  const checks = { intervalMs: 200, timeoutMs: 100, healthyThreshold: 2, unhealthyThreshold: 3 };

  it('takes an instance out after unhealthyThreshold failures in a row and back after healthyThreshold passes', () => {
    const capture = new LogCapture();
    const svc = makeService({ instances: origins(2), healthCheck: checks }, capture);
    const inst = svc.instances[0]!;
    svc.checked(inst, false, 0, 'ECONNREFUSED');
    svc.checked(inst, false, 0, 'ECONNREFUSED');
    svc.checked(inst, true, 0, 'answered 200');
    svc.checked(inst, false, 0, 'ECONNREFUSED');
    svc.checked(inst, false, 0, 'ECONNREFUSED');
    assert.equal(inst.healthy, true, 'a pass in between starts the count over');
    svc.checked(inst, false, 0, 'answered 503');
    assert.equal(inst.healthy, false);
    assert.equal(inst.unavailable(0), true);
    assert.equal(svc.pick(undefined, 0, null), svc.instances[1]);
    const down = capture.messages('WARN', 'upstream instance unhealthy');
    assert.equal(down.length, 1);
    assert.equal(down[0]!.detail, 'answered 503');
    svc.checked(inst, true, 0, 'answered 200');
    svc.checked(inst, false, 0, 'ECONNREFUSED');
    svc.checked(inst, true, 0, 'answered 200');
    assert.equal(inst.healthy, false, 'a failure in between starts the count over');
    svc.checked(inst, true, 0, 'answered 200');
    assert.equal(inst.healthy, true);
    assert.equal(capture.messages('INFO', 'upstream instance healthy').length, 1);
    // Repeated agreeing verdicts change nothing and log nothing.
    for (let i = 0; i < 5; i++) svc.checked(inst, true, 0, 'answered 200');
    assert.equal(capture.messages('INFO', 'upstream instance healthy').length, 1);
  });

  it('ends a passive ejection at the first check that starts after it and passes, even with no failed check between', () => {
    const capture = new LogCapture();
    const svc = makeService({ instances: origins(4), healthCheck: checks, outlierDetection: { consecutiveFailures: 1, baseEjectionMs: 60_000 } }, capture);
    const inst = svc.instances[0]!;
    svc.failed(inst, 'status', 0);
    assert.equal(inst.ejectedUntil, 60_000);
    // A failed check keeps it out.
    svc.checked(inst, false, 100, 'ECONNREFUSED', 50);
    assert.equal(inst.unavailable(100), true);
    // Restarted within one interval, it answers: back in rotation at that check, not after 60 s.
    svc.checked(inst, true, 300, 'answered 200', 250);
    assert.equal(inst.ejectedUntil, 0);
    assert.equal(inst.unavailable(300), false);
    assert.equal(inst.healthy, true);
    assert.equal(capture.messages('INFO', 'upstream instance passes its health check again; ejection ended').length, 1);
    // A check that was already under way when the instance was ejected says nothing about it after.
    svc.failed(inst, 'status', 500);
    assert.ok(inst.ejectedUntil > 500);
    svc.checked(inst, true, 600, 'answered 200', 450);
    assert.equal(inst.unavailable(600), true);
    svc.checked(inst, true, 800, 'answered 200', 700);
    assert.equal(inst.unavailable(800), false);
    // Ejected again, for longer: the back-off grows with each ejection.
    svc.failed(inst, 'status', 900);
    assert.equal(inst.ejectedUntil, 900 + 3 * 60_000, 'the third ejection lasts three times the base');
  });

  it('ignores verdicts when health checks are off, and puts instances back in rotation', () => {
    const svc = makeService({ instances: origins(2), healthCheck: { ...checks, unhealthyThreshold: 1 } });
    const inst = svc.instances[0]!;
    svc.checked(inst, false, 0, 'ECONNREFUSED');
    assert.equal(inst.healthy, false);
    svc.configure(serviceSchema.parse({ instances: origins(2), healthCheck: false }));
    assert.equal(svc.instances[0], inst);
    assert.equal(inst.healthy, true, 'without checks nothing could ever bring it back');
    svc.checked(inst, false, 0, 'ECONNREFUSED');
    assert.equal(inst.healthy, true);
  });
});

describe('UpstreamService: membership changes', () => {
  it('keeps the Instance objects (and their state) of known origins', () => {
    const svc = makeService({ instances: origins(3) });
    const [a, b, c] = svc.instances;
    a!.requests = 42;
    a!.active = 2;
    b!.healthy = false;
    b!.ejections = 3;
    const result = svc.setInstances([
      { origin: b!.origin, weight: 1 },
      { origin: 'http://10.0.0.9:9000', weight: 1 },
      { origin: a!.origin, weight: 5 },
      { origin: a!.origin, weight: 7 },
    ]);
    assert.deepEqual(result, { added: ['http://10.0.0.9:9000'], removed: [c!.origin] });
    assert.equal(svc.instances.length, 3, 'a repeated origin counts once');
    assert.equal(svc.instances[0], b);
    assert.equal(svc.instances[2], a);
    assert.equal(a!.requests, 42);
    assert.equal(a!.active, 2);
    assert.equal(a!.weight, 5, 'the weight follows the new spec');
    assert.equal(b!.healthy, false);
    assert.equal(b!.ejections, 3);
    const fresh = svc.instances[1]!;
    assert.equal(fresh.healthy, true);
    assert.equal(fresh.requests, 0);
    assert.ok(Object.isFrozen(svc.instances));
  });

  it('keeps them across a re-configure (a reload) that lists the same origins', () => {
    const svc = makeService({ instances: origins(3) });
    const before = [...svc.instances];
    before[0]!.requests = 7;
    svc.configure(serviceSchema.parse({ instances: [...origins(3).reverse(), 'http://10.0.0.9:9000/'], balancer: 'least-request' }));
    assert.equal(svc.instances.length, 4);
    for (const inst of before) assert.ok(svc.instances.includes(inst));
    assert.equal(before[0]!.requests, 7);
    assert.equal(svc.balancer, 'least-request');
  });
});
