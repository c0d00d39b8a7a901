import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, beforeEach, describe, it } from 'node:test';
import { request } from 'undici';
import { createLoggers } from '../../src/observability/logger.js';
import { ClientAddress } from '../../src/pipeline/client-address.js';
import { ANSWERED, PASS, stage, type Exchange, type Refusal, type Route, type Stage } from '../../src/pipeline/exchange.js';
import { requestId } from '../../src/pipeline/request-id.js';
import { Runner } from '../../src/pipeline/run.js';
import { LogCapture } from '../helpers/gateway.js';
import { expectProblem, read } from '../helpers/http.js';

/**
 * The runner alone, on a real loopback server, with stages made up for the test: the order,
 * the synchronous path, waiting on a stage that does I/O, refusals, failures, the switch from
 * the entry to the route's chain, and the one call to the exit phase per request.
 */

const trail: string[] = [];
const finished: Array<{ id: string; status: number; refusal: Refusal | null; route: string | null }> = [];
const capture = new LogCapture();

function answer(text: string): Stage {
  return stage(`answer-${text}`, (_ex, _req, res) => {
    trail.push(`answer-${text}`);
    res.writeHead(200, { 'content-type': 'text/plain' }).end(text);
    return ANSWERED;
  });
}

function step(name: string): Stage {
  return stage(name, () => {
    trail.push(name);
    return PASS;
  });
}

const slow = stage('slow', () => {
  trail.push('slow:begin');
  return new Promise((resolve) => setImmediate(() => {
    trail.push('slow:end');
    resolve(PASS);
  }));
});

function route(name: string, chain: Stage[]): Route {
  return { name, template: `/${name}`, auth: 'public', phi: false, logQuery: null, cors: null, rateLimit: { perMinute: 1, ownKey: false, failClosed: false, policyName: 'default', policyHeader: '' }, chain };
}

const ROUTES: Record<string, Route> = {
  '/sync': route('sync', [step('authorize'), answer('sync')]),
  '/async': route('async', [step('before'), slow, step('after'), answer('async')]),
  '/refused': route('refused', [step('first'), stage('refuse', () => ({ code: 'GW_FORBIDDEN', detail: 'no', counts: 'auth-failure' })), answer('never')]),
  '/throws': route('throws', [stage('throws', () => { throw new Error('a stage broke'); }), answer('never')]),
  '/rejects': route('rejects', [stage('rejects', () => Promise.reject(new Error('a stage broke later'))), answer('never')]),
  '/unanswered': route('unanswered', [step('only')]),
};

/** The entry: names the route, or leaves a miss for the runner to answer after the last entry stage. */
const match = stage('route-match', (ex: Exchange, req: IncomingMessage) => {
  trail.push('route-match');
  const found = ROUTES[req.url!];
  if (found !== undefined) ex.route = found;
  else ex.miss = { code: 'GW_ROUTE_NOT_FOUND', detail: 'no route matches this path' };
  return PASS;
});

let server: Server;
let origin: string;
let syncAnswer: boolean | null = null;

before(async () => {
  const runner = new Runner(
    { own: [requestId, step('own-admission'), answer('own')], isOwn: (url) => url === '/own', entry: [requestId, step('entry-admission'), match, step('cors')] },
    {
      addresses: new ClientAddress(null),
      tracing: null,
      hsts: null,
      finish: (ex, _req, res) => finished.push({ id: ex.id, status: res.writableFinished ? res.statusCode : 499, refusal: ex.refusal, route: ex.route?.name ?? null }),
      logger: createLoggers('INFO', capture).log,
    },
  );
  server = createServer((req: IncomingMessage, res: ServerResponse) => {
    runner.handle(req, res);
    // Whether the answer was written before handle() returned: the synchronous path.
    syncAnswer = res.writableEnded;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(() => new Promise<void>((resolve) => server.close(() => resolve())));

beforeEach(() => {
  trail.length = 0;
  finished.length = 0;
  syncAnswer = null;
});

const get = (path: string) => read(request(`${origin}${path}`));

/** The exit phase runs when the response closes, a moment after the client has its answer. */
async function exitPhase(): Promise<(typeof finished)[number]> {
  while (finished.length === 0) await new Promise((resolve) => setImmediate(resolve));
  return finished[0]!;
}

describe('runner', () => {
  it('runs the entry, then the route chain, in order; without I/O all of it before handle() returns', async () => {
    const res = await get('/sync');
    assert.equal(res.text, 'sync');
    assert.deepEqual(trail, ['entry-admission', 'route-match', 'cors', 'authorize', 'answer-sync']);
    assert.equal(syncAnswer, true);
    const done = await exitPhase();
    assert.match(done.id, /^[0-9a-f-]{36}$/);
    assert.deepEqual({ ...done, id: 'x' }, { id: 'x', status: 200, refusal: null, route: 'sync' });
  });

  it('waits for a stage that returns a promise, then goes on with the next one', async () => {
    const res = await get('/async');
    assert.equal(res.text, 'async');
    assert.deepEqual(trail, ['entry-admission', 'route-match', 'cors', 'before', 'slow:begin', 'slow:end', 'after', 'answer-async']);
    assert.equal(syncAnswer, false);
  });

  it('a refusal ends the chain with the one problem shape, and the exit phase sees it', async () => {
    expectProblem(await get('/refused'), 403, 'GW_FORBIDDEN');
    assert.deepEqual(trail, ['entry-admission', 'route-match', 'cors', 'first']);
    const done = await exitPhase();
    assert.equal(done.refusal?.counts, 'auth-failure');
    assert.equal(done.status, 403);
  });

  it('no route: every entry stage runs (cors decorates the answer), then the miss is answered', async () => {
    expectProblem(await get('/nowhere'), 404, 'GW_ROUTE_NOT_FOUND');
    assert.deepEqual(trail, ['entry-admission', 'route-match', 'cors']);
  });

  it('a stage that throws, or whose promise rejects, is a 500 with the request id, logged; nothing after it runs', async () => {
    for (const path of ['/throws', '/rejects']) {
      expectProblem(await get(path), 500, 'GW_INTERNAL');
      assert.ok(!trail.includes('answer-never'));
    }
    assert.equal(capture.messages('ERROR', 'unhandled error').length, 2);
  });

  it('a route chain that ends without answering is a 500, never a hang', async () => {
    expectProblem(await get('/unanswered'), 500, 'GW_INTERNAL');
  });

  it("the own endpoints' door runs its own stages and never the entry", async () => {
    assert.equal((await get('/own')).text, 'own');
    assert.deepEqual(trail, ['own-admission', 'answer-own']);
  });
});
