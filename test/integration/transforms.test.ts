import assert from 'node:assert/strict';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { Client, request } from 'undici';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { assertNoBanners, expectProblem, read, type Answer } from '../helpers/http.js';
import { rawExchange } from '../helpers/raw-http.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type ReceivedRequest, type TestUpstream } from '../helpers/upstream.js';

/** What an upstream's failure might say: a stack trace with source paths, and a patient's name. */
const FAKE_STACK = [
  'TypeError: Cannot read properties of undefined (reading "dob")',
  '    at PatientRepository.find (/srv/records/src/patients/repository.ts:41:13)',
  '    at async RecordsController.show (/srv/records/src/records/controller.ts:88:5)',
  '    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)',
].join('\n');
const CANARY = 'Zebulon-Quartermaine-PHI-CANARY';
const ERROR_BODY = JSON.stringify({ error: `no chart for patient ${CANARY}`, stack: FAKE_STACK });
const NOT_FOUND_BODY = JSON.stringify({ error: `patient ${CANARY} not found`, trace: FAKE_STACK });
const OK_BODY = '{"chart":"ok","bytes":"\\u00e9 kept"}';

/** The headers of every upstream answer: banners, an internal field, a cache policy the route overrides. */
const UPSTREAM_HEADERS: Record<string, string | string[]> = {
  server: 'Apache/2.4.58 (Unix)',
  'x-powered-by': 'Express',
  'x-internal': 'node-7.records.svc',
  'x-keep': 'kept',
  'cache-control': 'public, max-age=600',
  'x-gateway': 'upstream-says',
  'x-frame-options': ['SAMEORIGIN', 'ALLOW-FROM https://evil.example'],
};

/** The raw header lines the upstream got for `name` (every copy, in order). */
function rawValues(seen: ReceivedRequest, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) if (seen.rawHeaders[i]!.toLowerCase() === name) out.push(seen.rawHeaders[i + 1]!);
  return out;
}

/** Reads what is left of a request body, then answers. */
function drained(req: IncomingMessage): Promise<void> {
  return new Promise((resolve) => {
    req.resume();
    req.on('end', resolve);
  });
}

describe('route transformations', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let token: string;
  // The /reset500 answer is held half-sent until the next request on the client's connection arrives.
  let nextArrived: () => void = () => undefined;

  async function answer(req: IncomingMessage, res: ServerResponse): Promise<void> {
    await drained(req);
    const path = req.url!.split('?')[0]!;
    const last = path.slice(path.lastIndexOf('/') + 1);
    if (last === 'err500') {
      res.writeHead(500, { ...UPSTREAM_HEADERS, 'content-type': 'application/json', 'set-cookie': `debug=${CANARY}` });
      res.end(ERROR_BODY);
    } else if (last === 'err404') {
      res.writeHead(404, { ...UPSTREAM_HEADERS, 'content-type': 'application/json' });
      res.end(NOT_FOUND_BODY);
    } else if (last === 'err503') {
      res.writeHead(503, { 'retry-after': '7', 'content-type': 'text/plain' });
      res.end(`overloaded while reading ${CANARY}`);
    } else if (last === 'slow500') {
      // The head and part of the body now, the rest later: the client's answer must not wait for it.
      res.writeHead(500, { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' });
      res.write(`${FAKE_STACK}\n`);
      setTimeout(() => res.end(`${'x'.repeat(64 * 1024)}\n${CANARY}`), 300);
    } else if (last === 'reset500') {
      // Promises more body than it sends, then dies once the client's next request is under way.
      res.writeHead(500, { 'content-type': 'text/plain', 'content-length': '100000' });
      res.write(`${FAKE_STACK}\n${CANARY}`);
      await new Promise<void>((resolve) => (nextArrived = resolve));
      res.socket!.destroy();
    } else if (last === 'held-ok') {
      nextArrived();
      setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('second answer'), 200);
    } else if (last === 'ok') {
      res.writeHead(200, { ...UPSTREAM_HEADERS, 'content-type': 'application/json; charset=utf-8' });
      res.end(OK_BODY);
    } else {
      const body = JSON.stringify({ url: req.url, headers: req.headers });
      res.writeHead(200, { ...UPSTREAM_HEADERS, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    }
  }

  before(async () => {
    upstream = await startUpstream((req, res) => answer(req, res));
    const routesFile = {
      // Upstream 5xx answers are the point of some tests here: no instance is taken out for them.
      services: { backend: { instances: [upstream.url], outlierDetection: false, retry: false } },
      routes: [
        {
          name: 'clinic-records',
          pattern: '/api/v1/clinics/:clinicId/patients/:patientId',
          rewrite: '/internal/patients/:patientId/clinic/:clinicId',
          auth: 'required',
          transform: {
            request: {
              headers: {
                set: {
                  'X-Tenant': 'clinic-{user.id}',
                  'X-Caller': '{user.role}/{user.phi_access_level}',
                  'X-Trace': '{request.id}@{route.name}',
                  'X-Client-IP': '{client.ip}',
                  'X-Patient': 'patient:{param.patientId}',
                },
                add: { 'X-Via': 'gw' },
                remove: ['X-Debug'],
              },
              query: {
                rename: { q: 'search' },
                remove: ['debug'],
                add: { source: 'gateway', caller: '{user.role}', clinic: '{param.clinicId}' },
              },
            },
            response: {
              headers: {
                set: { 'Cache-Control': 'no-store', 'X-Frame-Options': 'DENY' },
                add: { 'X-Gateway': 'hc-gw' },
                remove: ['X-Internal'],
              },
            },
          },
        },
        {
          name: 'open',
          prefix: '/open',
          auth: 'public',
          transform: {
            request: {
              headers: {
                set: { 'X-Tenant': 'clinic-{user.id}', 'X-Route': '{route.name}' },
                add: { 'X-User-Echo': 'role={user.role}', 'X-Static': 'yes' },
              },
              query: { add: { source: 'gateway', caller: '{user.role}' } },
            },
          },
        },
        {
          // The client-facing name is checked against the token; the upstream knows it as pid.
          name: 'own-records',
          path: '/own/records',
          auth: 'required',
          roles: ['resident'],
          subject: { query: 'patient_id' },
          transform: { request: { query: { rename: { patient_id: 'pid' } } } },
        },
        { name: 'mapped', prefix: '/mapped', auth: 'public', transform: { mapErrors: true } },
        { name: 'unmapped', prefix: '/unmapped', auth: 'public' },
      ].map((r) => ({ service: 'backend', ...r })),
    };
    gw = await startTestGateway(routesFile);
    token = await signToken({ sub: 'u-42', role: 'health_provider', claims: { phi_access_level: 'full' } });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  describe('a pattern route with a rewrite and request transforms', () => {
    let seen: ReceivedRequest;
    let res: Answer;

    before(async () => {
      const query = ['q=a%20b%2Bc', 'keep=x%2Fy%3Dz', 'debug=1', 'source=evil', 'plus=a+b', 'caller=admin', 'flag', 'utf=%C3%A9%e2%9c%93', '%64ebug=2', '%73ource=evil2'].join('&');
      res = await read(
        request(`${gw.url}/api/v1/clinics/c-1/patients/p-9?${query}`, {
          headers: [
            'authorization', `Bearer ${token}`,
            'x-request-id', 'client-req-7',
            // The client's copies of fields the route sets: every one must be replaced.
            'X-Tenant', 'clinic-someone-else',
            'x-tenant', 'clinic-admin',
            'X-Caller', 'admin/full',
            'X-Patient', 'patient:victim',
            'X-Client-IP', '10.9.9.9',
            'x-forwarded-for', '6.6.6.6',
            'X-Debug', 'verbose',
            'X-Via', 'client-proxy',
            'X-Other', 'passes',
          ],
        }),
      );
      seen = upstream.received.at(-1)!;
    });

    it('rewrites the path from the named parameters', () => {
      assert.equal(res.statusCode, 200, res.text);
      assert.ok(seen.url.startsWith('/internal/patients/p-9/clinic/c-1?'), seen.url);
    });

    it('renames, removes and adds query parameters, keeping untouched values byte for byte', () => {
      assert.equal(
        seen.url,
        '/internal/patients/p-9/clinic/c-1?search=a%20b%2Bc&keep=x%2Fy%3Dz&plus=a+b&flag&utf=%C3%A9%e2%9c%93&source=gateway&caller=health_provider&clinic=c-1',
      );
      // The client's source=evil (plain or encoded) is gone, the gateway's is the only one.
      assert.doesNotMatch(seen.url, /evil/);
      assert.equal(new URL(seen.url, 'http://x').searchParams.getAll('source').length, 1);
      // The client sees the same in the echo.
      assert.equal((JSON.parse(res.text) as { url: string }).url, seen.url);
    });

    it('fills every placeholder from the verified token, the exchange and the path', () => {
      assert.deepEqual(rawValues(seen, 'x-tenant'), ['clinic-u-42']);
      assert.deepEqual(rawValues(seen, 'x-caller'), ['health_provider/full']);
      assert.deepEqual(rawValues(seen, 'x-trace'), ['client-req-7@clinic-records']);
      // The socket peer, whatever X-Forwarded-For the client wrote (no trusted proxy is configured).
      assert.deepEqual(rawValues(seen, 'x-client-ip'), ['127.0.0.1']);
      assert.deepEqual(rawValues(seen, 'x-patient'), ['patient:p-9']);
      // The gateway's own identity headers are still there.
      assert.equal(seen.headers['x-user-id'], 'u-42');
      assert.equal(seen.headers['x-user-role'], 'health_provider');
      assert.equal(seen.headers['x-phi-access-level'], 'full');
      assert.equal(seen.headers['x-request-id'], 'client-req-7');
    });

    it('replaces every client copy of a field the route sets, appends with add, drops with remove', () => {
      for (const name of ['x-tenant', 'x-caller', 'x-patient', 'x-client-ip']) assert.equal(rawValues(seen, name).length, 1, name);
      assert.doesNotMatch(JSON.stringify(seen.rawHeaders), /someone-else|clinic-admin|victim|10\.9\.9\.9|admin\/full/);
      assert.deepEqual(rawValues(seen, 'x-via'), ['client-proxy', 'gw']);
      assert.deepEqual(rawValues(seen, 'x-debug'), []);
      assert.deepEqual(rawValues(seen, 'x-other'), ['passes']);
    });

    it('sets, adds and removes response headers, with the banners still dropped', () => {
      assert.equal(res.headers['cache-control'], 'no-store');
      // Both of the upstream's copies are replaced by the one the route sets.
      assert.equal(res.headers['x-frame-options'], 'DENY');
      assert.deepEqual(res.headers['x-gateway'], ['upstream-says', 'hc-gw']);
      assert.equal(res.headers['x-internal'], undefined);
      assert.equal(res.headers['x-keep'], 'kept');
      assert.equal(res.headers['x-request-id'], 'client-req-7');
      assertNoBanners(res.headers);
    });

    it('takes a fresh request id into the placeholder when the client sends none', async () => {
      const answer = await read(request(`${gw.url}/api/v1/clinics/c-2/patients/p-3`, { headers: { authorization: `Bearer ${token}` } }));
      assert.equal(answer.statusCode, 200, answer.text);
      const last = upstream.received.at(-1)!;
      const id = answer.headers['x-request-id'];
      assert.equal(typeof id, 'string');
      assert.deepEqual(rawValues(last, 'x-trace'), [`${String(id)}@clinic-records`]);
      assert.equal(last.url, '/internal/patients/p-3/clinic/c-2?source=gateway&caller=health_provider&clinic=c-2');
    });

    it('refuses the route without a token and never calls the upstream', async () => {
      const before = upstream.received.length;
      expectProblem(await read(request(`${gw.url}/api/v1/clinics/c-1/patients/p-9`)), 401, 'GW_AUTH_TOKEN_MISSING');
      assert.equal(upstream.received.length, before);
    });
  });

  describe('a public route', () => {
    it('leaves out every header and query parameter whose template needs a user, and drops the client copies the route owns', async () => {
      const res = await read(
        request(`${gw.url}/open/thing?caller=admin&source=evil&x=1`, { headers: { 'x-tenant': 'clinic-u-1', 'x-route': 'forged' } }),
      );
      assert.equal(res.statusCode, 200, res.text);
      const seen = upstream.received.at(-1)!;
      assert.equal(seen.url, '/open/thing?x=1&source=gateway');
      assert.deepEqual(rawValues(seen, 'x-tenant'), []);
      assert.deepEqual(rawValues(seen, 'x-user-echo'), []);
      assert.deepEqual(rawValues(seen, 'x-route'), ['open']);
      assert.deepEqual(rawValues(seen, 'x-static'), ['yes']);
      assert.equal(seen.headers['x-user-id'], undefined);
      assert.doesNotMatch(seen.url + JSON.stringify(seen.rawHeaders), /\{user\.|undefined|null/);
    });
  });

  describe('a query rename on a route with a subject check', () => {
    it('sends the renamed parameter for the checked value', async () => {
      const resident = await signToken({ sub: 'r-1', role: 'resident' });
      const res = await read(request(`${gw.url}/own/records?patient_id=r-1`, { headers: { authorization: `Bearer ${resident}` } }));
      assert.equal(res.statusCode, 200, res.text);
      assert.equal(upstream.received.at(-1)!.url, '/own/records?pid=r-1');
      expectProblem(await read(request(`${gw.url}/own/records?patient_id=r-2`, { headers: { authorization: `Bearer ${resident}` } })), 403, 'GW_FORBIDDEN');
    });

    // transformQuery drops a client's copy of a name the route adds, but not of a rename target:
    // the subject check passes on patient_id=r-1 while the upstream gets pid=r-2&pid=r-1.
    it('does not let the client send the rename target itself', async () => {
      const resident = await signToken({ sub: 'r-1', role: 'resident' });
      const before = upstream.received.length;
      const res = await read(request(`${gw.url}/own/records?pid=r-2&patient_id=r-1`, { headers: { authorization: `Bearer ${resident}` } }));
      if (res.statusCode === 200) {
        const url = upstream.received.at(-1)!.url;
        assert.deepEqual(new URL(url, 'http://x').searchParams.getAll('pid'), ['r-1'], `the upstream got ${url}`);
      } else {
        assert.equal(upstream.received.length, before, 'a refused request never reaches the upstream');
      }
    });
  });

  describe('mapErrors', () => {
    function assertNothingLeaked(res: Answer): void {
      const everything = res.text + JSON.stringify(res.headers);
      assert.ok(!everything.includes(CANARY), `the canary reached the client: ${everything}`);
      assert.ok(!everything.includes('repository.ts'), `the stack trace reached the client: ${everything}`);
      assert.ok(!everything.includes('PatientRepository'), `the stack trace reached the client: ${everything}`);
      assert.equal(res.headers['x-internal'], undefined);
      assert.equal(res.headers['set-cookie'], undefined);
    }

    it('replaces an upstream 500 and its body with the gateway error shape', async () => {
      const before = upstream.received.length;
      const res = await read(request(`${gw.url}/mapped/records/err500`, { headers: { 'x-request-id': 'map-500' } }));
      const body = expectProblem(res, 500, 'GW_UPSTREAM_ERROR');
      assert.equal(upstream.received.length, before + 1, 'the upstream was called');
      assert.equal(body.request_id, 'map-500');
      assert.equal(body.type, 'urn:api-gateway:error:GW_UPSTREAM_ERROR');
      assert.equal(res.headers['cache-control'], 'no-store');
      assert.equal(Number(res.headers['content-length']), Buffer.byteLength(res.text));
      assertNothingLeaked(res);
    });

    it('replaces an upstream 404 the same way, with status 404', async () => {
      const res = await read(request(`${gw.url}/mapped/records/err404`));
      const body = expectProblem(res, 404, 'GW_UPSTREAM_ERROR');
      assert.equal(body.title, 'Not Found');
      assertNothingLeaked(res);
    });

    it('keeps the Retry-After of an upstream 503', async () => {
      const res = await read(request(`${gw.url}/mapped/records/err503`));
      expectProblem(res, 503, 'GW_UPSTREAM_ERROR');
      assert.equal(res.headers['retry-after'], '7');
      assertNothingLeaked(res);
    });

    it('passes a 200 through untouched', async () => {
      const res = await read(request(`${gw.url}/mapped/records/ok`));
      assert.equal(res.statusCode, 200);
      assert.equal(res.text, OK_BODY);
      assert.equal(res.headers['content-type'], 'application/json; charset=utf-8');
      assert.equal(res.headers['x-keep'], 'kept');
      assertNoBanners(res.headers);
    });

    it('keeps the client connection usable after a mapped error', async () => {
      const client = new Client(gw.url);
      let connects = 0;
      client.on('connect', () => connects++);
      try {
        const first = await read(client.request({ method: 'GET', path: '/mapped/records/err500' }));
        expectProblem(first, 500, 'GW_UPSTREAM_ERROR');
        assert.notEqual(first.headers.connection, 'close');
        // The upstream is still sending the rest of this body when the client gets its answer.
        const second = await read(client.request({ method: 'GET', path: '/mapped/records/slow500' }));
        expectProblem(second, 500, 'GW_UPSTREAM_ERROR');
        assertNothingLeaked(second);
        const third = await read(client.request({ method: 'GET', path: '/mapped/records/ok' }));
        assert.equal(third.statusCode, 200);
        assert.equal(third.text, OK_BODY);
        assert.equal(connects, 1, 'all three requests went over one keep-alive connection');
      } finally {
        await client.close();
      }
    });

    it('keeps pipelined requests on one connection framed correctly after a mapped error', async () => {
      const payload =
        'GET /mapped/records/err500 HTTP/1.1\r\nHost: gw\r\n\r\n' +
        'GET /mapped/records/err404 HTTP/1.1\r\nHost: gw\r\n\r\n' +
        'GET /mapped/records/ok HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n';
      const { responses, text } = await rawExchange(gw.port, payload);
      assert.deepEqual(
        responses.map((r) => r.status),
        [500, 404, 200],
        text,
      );
      assert.equal(responses[2]!.body, OK_BODY);
      assert.ok(!text.includes(CANARY) && !text.includes('repository.ts'), text);
    });

    it('keeps the client connection when the upstream dies in the middle of an error body it already replaced', async () => {
      const client = new Client(gw.url);
      let connects = 0;
      client.on('connect', () => connects++);
      try {
        const first = await read(client.request({ method: 'GET', path: '/mapped/records/reset500' }));
        expectProblem(first, 500, 'GW_UPSTREAM_ERROR');
        // The upstream resets the first request's connection while this one is in flight.
        const second = await read(client.request({ method: 'GET', path: '/mapped/records/held-ok' }));
        assert.equal(second.statusCode, 200);
        assert.equal(second.text, 'second answer');
        assert.equal(connects, 1);
      } finally {
        await client.close();
      }
    });

    it('lets an upstream error body through unchanged on a route without mapErrors', async () => {
      const res = await read(request(`${gw.url}/unmapped/records/err500`));
      assert.equal(res.statusCode, 500);
      assert.equal(res.text, ERROR_BODY);
      assert.equal(res.headers['content-type'], 'application/json');
      assertNoBanners(res.headers);
      const notFound = await read(request(`${gw.url}/unmapped/records/err404`));
      assert.equal(notFound.statusCode, 404);
      assert.equal(notFound.text, NOT_FOUND_BODY);
    });
  });
});
