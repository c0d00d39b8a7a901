import assert from 'node:assert/strict';
import type { IncomingHttpHeaders } from 'node:http';
import { describe, it } from 'node:test';
import { compileConfig } from '../../src/config/compile.js';
import { parseEnv, type Env } from '../../src/config/env.js';
import { routesFileSchema } from '../../src/config/routes-schema.js';
import { prefixMatches, type RouteMatch, type Router } from '../../src/pipeline/route-match.js';

import { createLoggers } from '../../src/observability/logger.js';
import { UpstreamService } from '../../src/upstream/service.js';
import { TEST_SECRET } from '../helpers/tokens.js';

const parsed = parseEnv({ JWT_SECRET: TEST_SECRET });
if ('errors' in parsed) throw new Error(parsed.errors.join('; '));
const env: Env = parsed.env;

/** A router built the way the gateway builds it, from routes as they would be written in the file. */
function routerFor(routes: Array<Record<string, unknown>>): Router {
  const file = routesFileSchema.parse({
    services: { backend: { instances: ['http://backend.internal:8000'] } },
    routes: routes.map((r) => ({ service: 'backend', ...r })),
  });
  const backend = new UpstreamService('backend', createLoggers('ERROR').log);
  return compileConfig(file, env, new Map([['backend', backend]])).router;
}

function found(m: RouteMatch): string {
  assert.equal(m.kind, 'found', `expected a route, got ${JSON.stringify(m)}`);
  return m.kind === 'found' ? m.route.name : '';
}

const NO_HEADERS: IncomingHttpHeaders = {};

describe('route matching: precedence', () => {
  const router = routerFor([
    { name: 'prefix-api', prefix: '/api' },
    { name: 'prefix-patients', prefix: '/api/v1/patients' },
    { name: 'pattern-patient', pattern: '/api/v1/patients/:id' },
    { name: 'pattern-any-v1', pattern: '/api/v1/:kind/:id' },
    { name: 'exact-me', path: '/api/v1/patients/me' },
    { name: 'prefix-chat', prefix: '/api/chat' },
    { name: 'prefix-slash', prefix: '/files/' },
  ]);

  it('an exact path beats a pattern and a prefix declared before it', () => {
    assert.equal(found(router.match('GET', '/api/v1/patients/me', NO_HEADERS)), 'exact-me');
  });

  it('a pattern beats any prefix, and patterns are tried in file order', () => {
    const m = router.match('GET', '/api/v1/patients/p-7', NO_HEADERS);
    assert.equal(found(m), 'pattern-patient');
    assert.deepEqual(m.kind === 'found' ? m.params : null, { id: 'p-7' });
    assert.equal(found(router.match('GET', '/api/v1/visits/v-1', NO_HEADERS)), 'pattern-any-v1');
  });

  it('a pattern parameter is one whole segment, never empty and never spanning a slash', () => {
    assert.equal(found(router.match('GET', '/api/v1/patients/p-7/notes', NO_HEADERS)), 'prefix-patients');
    assert.equal(found(router.match('GET', '/api/v1/patients/', NO_HEADERS)), 'prefix-patients');
  });

  it('the longest prefix wins, whatever the file order', () => {
    assert.equal(found(router.match('GET', '/api/v1/patients/p-7/notes/n-1', NO_HEADERS)), 'prefix-patients');
    assert.equal(found(router.match('GET', '/api/v2/anything', NO_HEADERS)), 'prefix-api');
  });

  it('a prefix matches whole segments only', () => {
    assert.equal(found(router.match('GET', '/api/chat', NO_HEADERS)), 'prefix-chat');
    assert.equal(found(router.match('GET', '/api/chat/', NO_HEADERS)), 'prefix-chat');
    assert.equal(found(router.match('GET', '/api/chat/rooms', NO_HEADERS)), 'prefix-chat');
    assert.equal(found(router.match('GET', '/api/chatty', NO_HEADERS)), 'prefix-api');
    assert.equal(router.match('GET', '/apix', NO_HEADERS).kind, 'not-found');
    assert.equal(router.match('GET', '/ap', NO_HEADERS).kind, 'not-found');
  });

  it('a prefix written with a trailing slash needs that slash', () => {
    assert.equal(found(router.match('GET', '/files/a.pdf', NO_HEADERS)), 'prefix-slash');
    assert.equal(found(router.match('GET', '/files/', NO_HEADERS)), 'prefix-slash');
    assert.equal(router.match('GET', '/files', NO_HEADERS).kind, 'not-found');
    assert.equal(router.match('GET', '/filesystem', NO_HEADERS).kind, 'not-found');
  });

  it('prefixMatches agrees on the segment boundary', () => {
    assert.equal(prefixMatches('/api/chat', '/api/chat'), true);
    assert.equal(prefixMatches('/api/chat', '/api/chat/x'), true);
    assert.equal(prefixMatches('/api/chat', '/api/chatty'), false);
    assert.equal(prefixMatches('/api/chat', '/api/chat.json'), false);
    assert.equal(prefixMatches('/api/chat', '/api/cha'), false);
  });

  it('matching is case-sensitive, as the upstream paths are', () => {
    assert.equal(router.match('GET', '/API/v1/patients/me', NO_HEADERS).kind, 'not-found');
  });
});

describe('route matching: header constraints', () => {
  const router = routerFor([
    { name: 'mobile', prefix: '/api', headers: { 'X-Client-Type': 'mobile' } },
    { name: 'v2', path: '/api/items', headers: { 'X-API-Version': '2' } },
    { name: 'web', prefix: '/api' },
  ]);

  it('a route with headers matches only when each has exactly that value', () => {
    assert.equal(found(router.match('GET', '/api/items', { 'x-api-version': '2' })), 'v2');
    assert.equal(found(router.match('GET', '/api/x', { 'x-client-type': 'mobile' })), 'mobile');
  });

  it('falls through to the next candidate when a header is missing or differs', () => {
    assert.equal(found(router.match('GET', '/api/items', { 'x-api-version': '3' })), 'web');
    assert.equal(found(router.match('GET', '/api/x', { 'x-client-type': 'Mobile' })), 'web');
    assert.equal(found(router.match('GET', '/api/x', { 'x-client-type': 'mobile, mobile' })), 'web');
    assert.equal(found(router.match('GET', '/api/x', NO_HEADERS)), 'web');
  });

  it('a header that no route accepts leaves nothing to match', () => {
    const only = routerFor([{ name: 'mobile-only', prefix: '/m', headers: { 'X-Client-Type': 'mobile' } }]);
    assert.equal(only.match('GET', '/m/x', { 'x-client-type': 'web' }).kind, 'not-found');
  });
});

describe('route matching: methods', () => {
  const router = routerFor([
    { name: 'read', path: '/api/notes', methods: ['GET'] },
    { name: 'write', path: '/api/notes', methods: ['post', 'PUT'] },
    { name: 'remove', pattern: '/api/:kind', methods: ['DELETE'] },
    { name: 'any', prefix: '/open' },
    { name: 'login', path: '/login', methods: ['POST'] },
  ]);

  it('routes by method among routes for the same path', () => {
    assert.equal(found(router.match('GET', '/api/notes', NO_HEADERS)), 'read');
    assert.equal(found(router.match('POST', '/api/notes', NO_HEADERS)), 'write');
    assert.equal(found(router.match('PUT', '/api/notes', NO_HEADERS)), 'write');
    assert.equal(found(router.match('DELETE', '/api/notes', NO_HEADERS)), 'remove');
  });

  it('answers 405 with the union of the methods every matching route allows', () => {
    assert.deepEqual(router.match('PATCH', '/api/notes', NO_HEADERS), { kind: 'method-not-allowed', allow: 'DELETE, GET, HEAD, POST, PUT' });
    assert.deepEqual(router.match('GET', '/login', NO_HEADERS), { kind: 'method-not-allowed', allow: 'POST' });
  });

  it('allows HEAD wherever GET is allowed, and only there', () => {
    assert.equal(found(router.match('HEAD', '/api/notes', NO_HEADERS)), 'read');
    assert.equal(router.match('HEAD', '/login', NO_HEADERS).kind, 'method-not-allowed');
  });

  it('a route without methods takes every method', () => {
    for (const m of ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']) assert.equal(found(router.match(m, '/open/x', NO_HEADERS)), 'any');
  });

  it('says not found, not 405, when no route matches the path at all', () => {
    assert.equal(router.match('PATCH', '/elsewhere', NO_HEADERS).kind, 'not-found');
  });
});
