import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { startTestGateway, routesFor, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, read } from '../helpers/http.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

describe('accepted media types (a route with accepts)', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let token: string;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'records', path: '/api/records', methods: ['POST', 'GET'], accepts: ['application/fhir+json', 'application/json'] },
        { name: 'notes', path: '/api/notes', methods: ['POST'] },
      ]),
    );
    token = await signToken({ role: 'health_provider' });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  const post = (path: string, type: string | null, body = '{"a":1}') =>
    read(request(`${gw.url}${path}`, { method: 'POST', body, headers: { authorization: `Bearer ${token}`, ...(type === null ? {} : { 'content-type': type }) } }));

  it('a body of another type, or of no declared type, is refused with 415 and never reaches the upstream', async () => {
    const before = upstream.received.length;
    for (const type of ['text/plain', 'application/xml', 'application/jsonx', null]) {
      const problem = expectProblem(await post('/api/records', type), 415, 'GW_UNSUPPORTED_MEDIA_TYPE');
      assert.match(problem.detail, /application\/fhir\+json or application\/json/);
    }
    assert.equal(upstream.received.length, before);
  });

  it('an accepted type passes, whatever its parameters and letter case; a request without a body is not asked for one', async () => {
    assert.equal((await post('/api/records', 'application/json; charset=utf-8')).statusCode, 200);
    assert.equal((await post('/api/records', 'Application/FHIR+JSON')).statusCode, 200);
    const get = await read(request(`${gw.url}/api/records`, { headers: { authorization: `Bearer ${token}` } }));
    assert.equal(get.statusCode, 200);
  });

  it('a route without accepts takes any type', async () => {
    assert.equal((await post('/api/notes', 'text/plain')).statusCode, 200);
  });

  it('the check comes after authentication: an anonymous caller learns nothing about the route', async () => {
    const anonymous = await read(request(`${gw.url}/api/records`, { method: 'POST', body: 'x', headers: { 'content-type': 'text/plain' } }));
    expectProblem(anonymous, 401, 'GW_AUTH_TOKEN_MISSING');
  });
});
