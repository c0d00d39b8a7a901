import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { ROUTE_CHAIN, type StageDeps } from '../../src/app.js';
import { compileConfig, type CompiledConfig } from '../../src/config/compile.js';
import { parseEnv } from '../../src/config/env.js';
import { parseRoutesFile } from '../../src/config/load.js';
import { createLoggers } from '../../src/observability/logger.js';
import { UpstreamService } from '../../src/upstream/service.js';
import { TEST_SECRET } from '../helpers/tokens.js';

/**
 * The chains the gateway builds: from the composition root's ROUTE_CHAIN, per route, when the
 * config compiles. A stage a route does not configure is not in its chain at all.
 */

const parsed = parseEnv({ JWT_SECRET: TEST_SECRET });
if ('errors' in parsed) throw new Error(parsed.errors.join('; '));
const env = parsed.env;
const log = createLoggers('ERROR').log;

/** Only what the factories read while building; nothing here is called before a request. */
const deps = { logger: log, audit: { accepting: true }, authFlow: { maxTokenLifetimeSeconds: 7200, clockSkewSeconds: 30 }, tls: false, tracing: null, upstreamCall: () => undefined, loopLag: null, shedDelayMs: 100 } as unknown as StageDeps;

function compile(yaml: string): CompiledConfig {
  const file = parseRoutesFile(yaml, { AUTH_SERVICE_URL: 'http://127.0.0.1:9', CHAT_HISTORY_URL: 'http://127.0.0.1:9' });
  const services = new Map(Object.keys(file.services).map((name) => [name, new UpstreamService(name, log)]));
  return compileConfig(file, env, services, (route, scope) => ROUTE_CHAIN.map((s) => s.create(route, { ...deps, ...scope })).filter((s) => s !== null));
}

const chainOf = (config: CompiledConfig, name: string) => config.routes.find((r) => r.name === name)!.chain.map((s) => s.name);

describe('route chains', () => {
  const shipped = compile(readFileSync(new URL('../../config/routes.yaml', import.meta.url), 'utf8'));

  it('the shipped routes: each chain holds what its route configures, in the path order, and ends with the stage that answers', () => {
    assert.deepEqual(chainOf(shipped, 'auth-login'), ['shed', 'access_check', 'auth-flow', 'transform', 'forward']);
    assert.deepEqual(chainOf(shipped, 'auth-logout'), ['shed', 'authenticate', 'access_check', 'auth-flow', 'transform', 'forward']);
    assert.deepEqual(chainOf(shipped, 'chat-history'), ['shed', 'authenticate', 'authorize', 'access_check', 'audit-gate', 'transform', 'forward']);
    assert.deepEqual(chainOf(shipped, 'gateway-revocations'), ['authenticate', 'authorize', 'access_check', 'revoke'], 'answered by the gateway: no shed');
    for (const route of shipped.routes) assert.ok(['forward', 'revoke'].includes(route.chain.at(-1)!.name), route.name);
  });

  it('a stage is in the chains of the routes that configure it, and absent from the others', () => {
    const config = compile(`
services: { backend: { instances: ["http://127.0.0.1:9"] } }
routes:
  - { name: records-write, path: /records, methods: [POST], service: backend, roles: [health_provider], accepts: [application/fhir+json, application/json] }
  - { name: records-read, path: /records, methods: [GET], service: backend }
  - { name: open, prefix: /open, service: backend, auth: public }
`);
    assert.deepEqual(chainOf(config, 'records-write'), ['shed', 'authenticate', 'authorize', 'access_check', 'content-type', 'transform', 'forward']);
    assert.deepEqual(chainOf(config, 'records-read'), ['shed', 'authenticate', 'access_check', 'transform', 'forward'], 'no roles: no authorize; no accepts: no content-type');
    assert.deepEqual(chainOf(config, 'open'), ['shed', 'access_check', 'transform', 'forward'], 'a public route: no authenticate');
  });
});
