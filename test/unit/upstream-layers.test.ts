import assert from 'node:assert/strict';
import type { IncomingHttpHeaders } from 'node:http';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import { createLoggers } from '../../src/observability/logger.js';
import { compose, UpstreamCall, type UpstreamDispatch, type UpstreamHandler, type UpstreamLayer } from '../../src/upstream/call.js';
import { BodyTooLarge, ClientClosed, GatewayRefusal, ResponseTimeout, TryTimeout, UpstreamFailure } from '../../src/upstream/failures.js';
import { poolSettings, type Instance } from '../../src/upstream/instance.js';
import { balance } from '../../src/upstream/layers/balance.js';
import { breaker } from '../../src/upstream/layers/breaker.js';
import { deadline } from '../../src/upstream/layers/deadline.js';
import { errorMap, toFailure } from '../../src/upstream/layers/error-map.js';
import { outlier } from '../../src/upstream/layers/outlier.js';
import { retry } from '../../src/upstream/layers/retry.js';
import { send } from '../../src/upstream/layers/send.js';
import { serviceSchema } from '../../src/upstream/service-schema.js';
import { UpstreamService } from '../../src/upstream/service.js';

/**
 * Each layer of the upstream call alone, around a scripted `send` that plays undici's part: it
 * calls the handler as a connection would, and reports an abort as undici does (onResponseError
 * with the abort's reason).
 */

const silent = createLoggers('ERROR').log;

function service(config: Record<string, unknown>): UpstreamService {
  const svc = new UpstreamService('backend', silent);
  svc.configure(serviceSchema.parse({ healthCheck: false, ...config }));
  return svc;
}

/** Waits, a turn of the loop at a time, until `done` holds. */
async function until(done: () => boolean): Promise<void> {
  while (!done()) await new Promise((resolve) => setImmediate(resolve));
}

const origins = (n: number) => Array.from({ length: n }, (_, i) => `http://10.0.0.${i + 1}:9000`);

function call(svc: UpstreamService, opts: { replayable?: boolean; timeoutMs?: number; startedAt?: number; client?: { destroyed: boolean } } = {}): UpstreamCall {
  const settings = { timeoutMs: opts.timeoutMs ?? 1_000, bodyIdleTimeoutMs: 30_000, pool: poolSettings(2_000, 8) };
  return new UpstreamCall(svc, settings, 'GET', '/x', [], null, opts.replayable ?? true, undefined, opts.client ?? { destroyed: false }, opts.startedAt ?? performance.now());
}

function errno(code: string): Error {
  return Object.assign(new Error(code), { code });
}

class FakeController {
  aborted = false;
  paused = false;
  reason: Error | null = null;
  /** Set by the scripted send: how undici reports an abort (at once here). */
  onAbort: ((err: Error) => void) | null = null;
  abort(err: Error): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = err;
    this.onAbort?.(err);
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
}

type Event = ['start'] | ['head', number] | ['data', string] | ['end'] | ['error', Error, boolean];

/** The top of the call: records what reaches it (the forward stage's place). */
class Recorder implements UpstreamHandler {
  readonly events: Event[] = [];
  controller: FakeController | null = null;
  onRequestStart(controller: unknown): void {
    this.controller = controller as FakeController;
    this.events.push(['start']);
  }
  onResponseStart(_c: unknown, status: number): void {
    this.events.push(['head', status]);
  }
  onResponseData(_c: unknown, chunk: Buffer): void {
    this.events.push(['data', chunk.toString()]);
  }
  onResponseEnd(): void {
    this.events.push(['end']);
  }
  onResponseError(controller: unknown, err: Error): void {
    this.events.push(['error', err, controller !== null]);
  }
  get error(): Error | undefined {
    return (this.events.find((e) => e[0] === 'error') as ['error', Error, boolean] | undefined)?.[1];
  }
  get statuses(): number[] {
    return this.events.filter((e) => e[0] === 'head').map((e) => e[1] as number);
  }
}

/** What one try does: answer with a status, fail with an error code, or hang (the test ends it). */
type Outcome = { status: number } | { error: string; connected?: boolean } | 'hang' | 'queued';

interface Scripted {
  send: UpstreamDispatch;
  /** The instance of each try, in order. */
  tries: Instance[];
  /** The handler and controller of the last try that hung or was queued. */
  pending: { handler: UpstreamHandler; controller: FakeController } | null;
}

function scripted(outcomes: Outcome[]): Scripted {
  const s: Scripted = { tries: [], pending: null, send: () => undefined };
  s.send = (c, handler) => {
    s.tries.push(c.instance!);
    const o = outcomes.shift() ?? { status: 200 };
    const controller = new FakeController();
    controller.onAbort = (err) => handler.onResponseError(controller as never, err);
    if (o === 'queued') {
      s.pending = { handler, controller };
      return;
    }
    if (typeof o === 'object' && 'error' in o && o.connected !== true) {
      handler.onResponseError(controller as never, errno(o.error));
      return;
    }
    handler.onRequestStart(controller as never, {});
    if (controller.aborted) return;
    if (o === 'hang') {
      s.pending = { handler, controller };
      return;
    }
    if ('error' in o) return handler.onResponseError(controller as never, errno(o.error));
    handler.onResponseStart(controller as never, o.status, {} as IncomingHttpHeaders);
    if (controller.aborted) return;
    handler.onResponseData(controller as never, Buffer.from('body'));
    handler.onResponseEnd(controller as never, {});
  };
  return s;
}

function run(layers: UpstreamLayer[], s: Scripted, c: UpstreamCall): Recorder {
  const recorder = new Recorder();
  compose(layers, s.send)(c, recorder);
  return recorder;
}

describe('upstream layers: compose', () => {
  it('wraps the layers from the outermost in, around the dispatch that sends', () => {
    const order: string[] = [];
    const named =
      (name: string): UpstreamLayer =>
      (next) =>
      (c, h) => {
        order.push(name);
        next(c, h);
      };
    compose([named('outer'), named('middle'), named('inner')], () => order.push('send'))(call(service({ instances: origins(1) })), new Recorder());
    assert.deepEqual(order, ['outer', 'middle', 'inner', 'send']);
  });
});

describe('upstream layers: error-map', () => {
  it('gives every failure a gateway code and a detail that names no internals', () => {
    const cases: Array<[Error, string]> = [
      [errno('ECONNREFUSED'), 'GW_UPSTREAM_UNAVAILABLE'],
      [errno('ECONNRESET'), 'GW_UPSTREAM_UNAVAILABLE'],
      [errno('UND_ERR_CONNECT_TIMEOUT'), 'GW_UPSTREAM_CONNECT_TIMEOUT'],
      [errno('UND_ERR_BODY_TIMEOUT'), 'GW_UPSTREAM_TIMEOUT'],
      [new ResponseTimeout(200), 'GW_UPSTREAM_TIMEOUT'],
      [new TryTimeout(50), 'GW_UPSTREAM_TIMEOUT'],
      [errno('HPE_INVALID_CONSTANT'), 'GW_UPSTREAM_BAD_RESPONSE'],
      [errno('UND_ERR_RES_CONTENT_LENGTH_MISMATCH'), 'GW_UPSTREAM_BAD_RESPONSE'],
      [new Error('no code at all'), 'GW_UPSTREAM_UNAVAILABLE'],
    ];
    for (const [err, code] of cases) {
      const failure = toFailure(err);
      assert.equal(failure.code, code, String((err as NodeJS.ErrnoException).code));
      assert.doesNotMatch(failure.detail, /ECONN|UND_ERR|HPE_|no code/);
    }
  });

  it('an upload cut at the limit is 413 and closes the connection; a refusal passes unchanged', () => {
    const tooLarge = toFailure(new BodyTooLarge('request body exceeds 10 bytes'));
    assert.equal(tooLarge.code, 'GW_BODY_TOO_LARGE');
    assert.equal(tooLarge.headers?.connection, 'close');
    const refusal = new GatewayRefusal('GW_UPSTREAM_OVERLOADED', 'busy', { 'retry-after': '1' });
    assert.equal(toFailure(refusal), refusal);
  });

  it('as a layer: the top of the call receives the mapped failure, with the errno kept as its cause', () => {
    const s = scripted([{ error: 'ECONNREFUSED' }]);
    const r = run([errorMap], s, call(service({ instances: origins(1) })));
    const err = r.error as UpstreamFailure;
    assert.ok(err instanceof UpstreamFailure);
    assert.equal(err.code, 'GW_UPSTREAM_UNAVAILABLE');
    assert.equal(err.causeCode, 'ECONNREFUSED');
  });
});

describe('upstream layers: breaker', () => {
  it('holds at most maxConcurrentRequests calls; the next is refused with 503 at once, and the place comes back however a call ends', () => {
    const svc = service({ instances: origins(1), maxConcurrentRequests: 1 });
    const s = scripted(['hang', { status: 200 }]);
    const first = run([breaker, balance], s, call(svc));
    assert.equal(svc.active, 1);
    const second = run([breaker, balance], s, call(svc));
    assert.equal(s.tries.length, 1, 'the refused call never reached an instance');
    const refused = second.error as GatewayRefusal;
    assert.equal(refused.code, 'GW_UPSTREAM_OVERLOADED');
    assert.match(refused.headers?.['retry-after'] ?? '', /^[123]$/);
    const after = new Set(Array.from({ length: 3 }, () => (run([breaker, balance], s, call(svc)).error as GatewayRefusal).headers!['retry-after']));
    assert.equal(after.size, 3, 'clients refused together are told to come back at different seconds');
    assert.equal(svc.overflows, 4);
    s.pending!.controller.abort(errno('ECONNRESET'));
    assert.ok(first.error !== undefined);
    assert.equal(svc.active, 0, 'an error gives the place back');
    run([breaker, balance], s, call(svc));
    assert.equal(svc.active, 0, 'an answer gives it back too');
  });
});

describe('upstream layers: balance', () => {
  it('picks the first instance from the service; with none in rotation: 502 with a Retry-After, and nothing sent', () => {
    const svc = service({ instances: origins(2) });
    const s = scripted([{ status: 200 }]);
    const c = call(svc);
    run([balance], s, c);
    assert.equal(s.tries.length, 1);
    assert.ok(svc.instances.includes(c.instance!));
    for (const inst of svc.instances) inst.healthy = false;
    const r = run([balance], s, call(svc));
    assert.equal((r.error as GatewayRefusal).code, 'GW_NO_HEALTHY_UPSTREAM');
    assert.match((r.error as GatewayRefusal).headers!['retry-after']!, /^\d+$/);
    assert.equal(svc.unavailable, 1);
    assert.equal(s.tries.length, 1);
  });
});

describe('upstream layers: retry', () => {
  const layers = [balance, retry];

  it('a connection refused is tried again on another instance, and counted', () => {
    const svc = service({ instances: origins(3) });
    const s = scripted([{ error: 'ECONNREFUSED' }, { status: 200 }]);
    const c = call(svc);
    const r = run(layers, s, c);
    assert.equal(s.tries.length, 2);
    assert.notEqual(s.tries[0], s.tries[1]);
    assert.deepEqual(r.statuses, [200]);
    assert.equal(r.error, undefined);
    assert.equal(c.retries, 1);
    assert.equal(svc.retries, 1);
  });

  it('a retryable status is dropped (the try is aborted) and never reaches the client', () => {
    const svc = service({ instances: origins(2) });
    const s = scripted([{ status: 503 }, { status: 200 }]);
    const r = run(layers, s, call(svc));
    assert.deepEqual(r.statuses, [200]);
    assert.equal(s.tries.length, 2);
  });

  it('a status it does not retry, and the last try of all, go to the client as they are', () => {
    const svc = service({ instances: origins(3), retry: { retries: 2, onStatuses: [503] } });
    assert.deepEqual(run(layers, scripted([{ status: 500 }]), call(svc)).statuses, [500]);
    const s = scripted([{ status: 503 }, { status: 503 }, { status: 503 }]);
    assert.deepEqual(run(layers, s, call(svc)).statuses, [503], 'the third 503 is the answer');
    assert.equal(s.tries.length, 3);
    assert.equal(new Set(s.tries).size, 3, 'each try on an instance not tried yet');
  });

  it('never retries what cannot be sent twice, nor with one instance, nor after the deadline, nor when the client left', () => {
    const svc = service({ instances: origins(3) });
    for (const c of [
      call(svc, { replayable: false }),
      call(service({ instances: origins(1) })),
      call(svc, { startedAt: performance.now() - 10_000, timeoutMs: 1_000 }),
      call(svc, { client: { destroyed: true } }),
    ]) {
      const s = scripted([{ error: 'ECONNREFUSED' }, { status: 200 }]);
      const r = run(layers, s, c);
      assert.equal(s.tries.length, 1);
      assert.equal((r.error as NodeJS.ErrnoException).code, 'ECONNREFUSED');
    }
  });

  it('never retries once the answer has begun', () => {
    const svc = service({ instances: origins(2) });
    const s = scripted(['hang']);
    const r = run(layers, s, call(svc));
    s.pending!.handler.onResponseStart(s.pending!.controller as never, 200, {});
    s.pending!.handler.onResponseError(s.pending!.controller as never, errno('ECONNRESET'));
    assert.equal(s.tries.length, 1);
    assert.equal((r.error as NodeJS.ErrnoException).code, 'ECONNRESET');
  });

  it('stays within its budget: past it, the failure goes to the client and the refusal is counted', () => {
    const svc = service({ instances: origins(2), retry: { retries: 1, budgetPercent: 0, minRetriesPerSecond: 0 } });
    const s = scripted([{ error: 'ECONNREFUSED' }, { status: 200 }]);
    const r = run(layers, s, call(svc));
    assert.equal(s.tries.length, 1);
    assert.ok(r.error !== undefined);
    assert.equal(svc.retriesRefused, 1);
  });

  it("a failure that is not the instance's (the client left) is not retried", () => {
    const svc = service({ instances: origins(2) });
    const s = scripted(['hang']);
    const r = run(layers, s, call(svc));
    s.pending!.controller.abort(new ClientClosed('client closed the connection'));
    assert.equal(s.tries.length, 1);
    assert.ok(r.error instanceof ClientClosed);
  });
});

describe('upstream layers: outlier', () => {
  it('counts the try in flight at its instance, records the latency of an answer, and resets the failure streak', () => {
    const svc = service({ instances: origins(1) });
    const s = scripted(['hang']);
    run([balance, outlier], s, call(svc));
    const inst = s.tries[0]!;
    assert.equal(inst.active, 1);
    assert.equal(inst.requests, 1);
    inst.consecutiveFailures = 3;
    s.pending!.handler.onResponseStart(s.pending!.controller as never, 200, {});
    s.pending!.handler.onResponseEnd(s.pending!.controller as never, {});
    assert.equal(inst.active, 0);
    assert.equal(inst.latencyCount, 1);
    assert.equal(inst.consecutiveFailures, 0);
  });

  it("counts the instance's failures by kind and ejects after enough in a row; the client leaving counts for nothing", () => {
    const svc = service({ instances: origins(2), outlierDetection: { consecutiveFailures: 2, maxEjectedPercent: 100 } });
    const inst = svc.instances[0]!;
    const one = (o: Outcome) => {
      const c = call(svc);
      c.instance = inst;
      const s = scripted([o]);
      compose([outlier], s.send)(c, new Recorder());
      return s;
    };
    one({ status: 502 });
    assert.equal(inst.failures.status, 1);
    const s = one('hang');
    s.pending!.controller.abort(new ClientClosed('gone'));
    assert.equal(inst.consecutiveFailures, 1, 'a client that left is not the instance failing');
    one({ error: 'ECONNREFUSED' });
    assert.equal(inst.failures.connect, 1);
    assert.ok(inst.ejectedUntil > performance.now(), 'two failures in a row eject it');
  });

  it('a retried status counts as a status failure of the instance that gave it', () => {
    const svc = service({ instances: origins(2) });
    const s = scripted([{ status: 503 }, { status: 200 }]);
    run([balance, retry, outlier], s, call(svc));
    assert.equal(s.tries[0]!.failures.status, 1);
    assert.equal(s.tries[1]!.failures.status, 0);
  });
});

describe('upstream layers: deadline', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'setImmediate'] }));
  afterEach(() => mock.timers.reset());

  it("a try without a response head by the route's deadline is aborted with a response timeout", () => {
    const svc = service({ instances: origins(1) });
    const s = scripted(['hang']);
    const r = run([balance, deadline], s, call(svc, { timeoutMs: 200 }));
    mock.timers.tick(150);
    assert.equal(s.pending!.controller.aborted, false, 'not before the deadline');
    mock.timers.tick(60);
    assert.ok(s.pending!.controller.reason instanceof ResponseTimeout);
    assert.ok(r.error instanceof ResponseTimeout);
  });

  it('a response head in time stops the clock', () => {
    const svc = service({ instances: origins(1) });
    const s = scripted(['hang']);
    const r = run([balance, deadline], s, call(svc, { timeoutMs: 200 }));
    s.pending!.handler.onResponseStart(s.pending!.controller as never, 200, {});
    mock.timers.tick(1_000);
    assert.equal(s.pending!.controller.aborted, false);
    assert.deepEqual(r.statuses, [200]);
  });

  it('a try still queued for a connection fails at the deadline; when a connection takes it later it is aborted there, and nothing more of it passes', () => {
    const svc = service({ instances: origins(1) });
    const s = scripted(['queued']);
    const r = run([balance, deadline], s, call(svc, { timeoutMs: 100 }));
    mock.timers.tick(101);
    assert.ok(r.error instanceof ResponseTimeout);
    assert.deepEqual(r.events[0]![2], false, 'failed without a controller');
    const late = s.pending!;
    late.handler.onRequestStart(late.controller as never, {});
    assert.ok(late.controller.reason instanceof ClientClosed);
    assert.equal(r.events.length, 1, 'the late try reports nothing more');
  });

  it('with retries possible, the per-try timeout applies when shorter, and the next try gets a timer of its own', () => {
    const svc = service({ instances: origins(2), retry: { perTryTimeoutMs: 50 } });
    const s = scripted(['hang', 'hang']);
    const r = run([balance, retry, outlier, deadline], s, call(svc, { timeoutMs: 1_000 }));
    mock.timers.tick(51);
    assert.ok(s.tries.length === 2, 'the first try timed out and a second began');
    assert.equal(s.tries[0]!.failures.timeout, 1);
    mock.timers.tick(51);
    assert.ok(r.error instanceof TryTimeout);
  });
});

describe('upstream layers: deadline, many at once', () => {
  it('deadlines that pass together expire a slice per turn of the loop, and other work runs between slices', async () => {
    const svc = service({ instances: origins(1), maxConcurrentRequests: 100_000 });
    const results = Array.from({ length: 20_000 }, () => {
      const s = scripted(['hang']);
      return run([balance, deadline], s, call(svc, { timeoutMs: 1 }));
    });
    const expiredBy = (): number => results.filter((r) => r.error instanceof ResponseTimeout).length;
    // Another request's I/O, due at the same moment: it runs before the last deadline is expired.
    let expiredWhenOtherWorkRan = -1;
    await new Promise<void>((resolve) => setTimeout(resolve, 5));
    await new Promise<void>((resolve) =>
      setImmediate(() => {
        expiredWhenOtherWorkRan = expiredBy();
        resolve();
      }),
    );
    await until(() => expiredBy() === 20_000);
    assert.ok(expiredWhenOtherWorkRan < 20_000, `other work ran after ${expiredWhenOtherWorkRan} of 20,000 expiries`);
  });

  it('while the work a wave of expiries sets off keeps the loop busy, the next expiries wait: other work passes through the wave', async () => {
    const spin = (ms: number) => {
      const end = performance.now() + ms;
      while (performance.now() < end);
    };
    const svc = service({ instances: origins(1), maxConcurrentRequests: 1_000 });
    const WAVE = 60;
    let expired = 0;
    // Each expiry costs a little at once (the 504) and more in the turns after (the connection
    // closing, the client's next request), as through the gateway.
    class Costly extends Recorder {
      override onResponseError(controller: unknown, err: Error): void {
        super.onResponseError(controller, err);
        expired++;
        spin(0.2);
        setImmediate(() => spin(1));
      }
    }
    for (let i = 0; i < WAVE; i++) compose([balance, deadline], scripted(['hang']).send)(call(svc, { timeoutMs: 1 }), new Costly());
    await until(() => expired > 0);
    // Another request, which needs five turns of the loop, starting as the wave does.
    for (let turn = 0; turn < 5; turn++) await new Promise((resolve) => setImmediate(resolve));
    const expiredWhenItWasDone = expired;
    await until(() => expired === WAVE);
    assert.ok(expiredWhenItWasDone < WAVE / 2, `the other request took its five turns while ${expiredWhenItWasDone} of ${WAVE} deadlines expired`);
  });

  it('the failures a wave of deadlines raises carry no stack to format (Node formats it for each aborted socket)', () => {
    for (const err of [new ResponseTimeout(5), new TryTimeout(5), new ClientClosed('gone'), new GatewayRefusal('GW_UPSTREAM_OVERLOADED', 'full')]) {
      assert.ok(!err.stack!.includes('\n    at '), `${err.constructor.name}: ${err.stack}`);
      assert.ok(err instanceof Error);
    }
    assert.ok(new Error('an ordinary error').stack!.includes('\n    at '), 'ordinary errors keep their stack');
  });

  it("each missed deadline lowers the service's adaptive limit by a tenth, down to 8; each answer in time raises it by one", () => {
    mock.timers.enable({ apis: ['setTimeout', 'setImmediate'] });
    try {
      const svc = service({ instances: origins(1), maxConcurrentRequests: 100 });
      assert.equal(svc.allowed, 100);
      for (let i = 0; i < 3; i++) run([balance, deadline], scripted(['hang']), call(svc, { timeoutMs: 10 }));
      mock.timers.tick(11);
      assert.equal(Math.round(svc.allowed * 10) / 10, 72.9);
      for (let i = 0; i < 60; i++) run([balance, deadline], scripted(['hang']), call(svc, { timeoutMs: 10 }));
      mock.timers.tick(11);
      assert.equal(svc.allowed, 8, 'not below 8');
      for (let i = 0; i < 5; i++) run([balance, deadline], scripted([{ status: 200 }]), call(svc, { timeoutMs: 10 }));
      assert.equal(svc.allowed, 13);
      const fixed = service({ instances: origins(1), maxConcurrentRequests: 100, adaptiveConcurrency: false });
      run([balance, deadline], scripted(['hang']), call(fixed, { timeoutMs: 10 }));
      mock.timers.tick(11);
      assert.equal(fixed.allowed, 100, 'adaptiveConcurrency: false keeps the limit');
    } finally {
      mock.timers.reset();
    }
  });
});

describe('upstream layers: send', () => {
  it("dispatches one try on the instance's pool for the route's settings, with the deadline left to its own layer", () => {
    const svc = service({ instances: origins(1) });
    const c = call(svc);
    const seen: Array<{ settings: unknown; opts: Record<string, unknown> }> = [];
    c.instance = {
      pool: (settings: unknown) => ({ dispatch: (opts: Record<string, unknown>) => seen.push({ settings, opts }) }),
    } as unknown as Instance;
    send(c, new Recorder());
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.settings, c.settings.pool);
    assert.deepEqual({ ...seen[0]!.opts }, { path: '/x', method: 'GET', headers: [], body: null, headersTimeout: 0, bodyTimeout: 30_000 });
  });
});
