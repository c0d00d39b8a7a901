import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Exchange, type Refusal } from '../../src/pipeline/exchange.js';
import { shed } from '../../src/pipeline/shed.js';
import { createLoggers } from '../../src/observability/logger.js';
import type { LoopLag } from '../../src/observability/loop-lag.js';
import { serviceSchema } from '../../src/upstream/service-schema.js';
import { UpstreamService } from '../../src/upstream/service.js';

/**
 * The door of every proxied route: what the route's service cannot take is refused before any
 * token is verified or any body read.
 */

const log = createLoggers('ERROR').log;

function setup(maxConcurrentRequests: number, delayMs = 0) {
  const svc = new UpstreamService('reports', log);
  svc.configure(serviceSchema.parse({ instances: ['http://10.0.0.1:9000'], healthCheck: false, maxConcurrentRequests }));
  const lag = { delayMs } as LoopLag;
  const stage = shed.create({ service: 'reports' }, { services: new Map([['reports', svc]]), loopLag: lag, shedDelayMs: 100 })!;
  const letIn: Exchange[] = [];
  const verdict = (headers: Record<string, string> = {}) => {
    const ex = new Exchange('', 0, '127.0.0.1', false, '127.0.0.1');
    const v = stage.handle(ex, { headers, httpVersionMajor: 1 } as never, null as never) as Refusal | undefined;
    if (v === undefined) letIn.push(ex);
    return v;
  };
  return { svc, lag, verdict, letIn };
}

describe('shed: refused at the door', () => {
  it('a request whose service has its limit in flight gets 503 GW_UPSTREAM_OVERLOADED, with Retry-After spread over 1 to 3 s', () => {
    const { svc, verdict } = setup(10);
    svc.active = 9;
    assert.equal(verdict(), undefined);
    svc.active = 10;
    const seen = Array.from({ length: 6 }, () => verdict()!);
    for (const r of seen) assert.equal(r.code, 'GW_UPSTREAM_OVERLOADED');
    assert.deepEqual(new Set(seen.map((r) => r.headers!['retry-after'])), new Set(['1', '2', '3']));
    assert.equal(svc.shedFull, 6);
    assert.equal(verdict({ 'transfer-encoding': 'chunked' })!.headers!.connection, 'close', 'a body left unread: the connection closes with the answer');
    assert.equal(verdict()!.headers!.connection, undefined);
  });

  it('a burst arriving at once is counted as it passes the door, before any of it is calling; each place comes back when it calls or ends', () => {
    const { svc, verdict, letIn } = setup(10);
    const verdicts = Array.from({ length: 15 }, () => verdict());
    assert.equal(verdicts.filter((v) => v === undefined).length, 10, 'the first ten pass');
    assert.equal(verdicts.filter((v) => v?.code === 'GW_UPSTREAM_OVERLOADED').length, 5, 'the five past the limit are refused, though none is in flight yet');
    // One calls (forward passes its place to the breaker's count), one is refused further on (the exit phase gives it back).
    letIn[0]!.leaveDoor();
    svc.active++;
    letIn[1]!.leaveDoor();
    letIn[1]!.leaveDoor();
    assert.equal(svc.entering, 8, 'a place is given back once');
    assert.equal(verdict(), undefined, 'a place is free again');
    assert.equal(verdict()?.code, 'GW_UPSTREAM_OVERLOADED');
  });

  it('the limit the door applies is the adaptive one: lowered while requests miss their deadline', () => {
    const { svc, verdict } = setup(100);
    svc.active = 20;
    assert.equal(verdict(), undefined);
    for (let i = 0; i < 20; i++) svc.missedDeadline();
    assert.ok(svc.allowed < 20);
    assert.equal(verdict()?.code, 'GW_UPSTREAM_OVERLOADED');
  });

  it('with the event loop late, a service holding a quarter of its limit is refused, one holding fewer is served', () => {
    const { svc, lag, verdict } = setup(100, 150);
    svc.active = 24;
    assert.equal(verdict(), undefined, 'few in flight: not the cause');
    svc.active = 25;
    assert.equal(verdict()?.code, 'GW_UPSTREAM_OVERLOADED');
    assert.equal(svc.shedLagging, 1);
    (lag as { delayMs: number }).delayMs = 50;
    assert.equal(verdict(), undefined, 'the loop on time again');
  });

  it('is not in the chain of a route without a service, nor of a WebSocket route', () => {
    const deps = { services: new Map(), loopLag: null, shedDelayMs: 100 };
    assert.equal(shed.create({}, deps), null);
    assert.equal(shed.create({ service: 'chat', websocket: { maxMessageBytes: 1 } }, deps), null);
  });
});
