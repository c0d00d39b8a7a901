import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseRoutesFile } from '../../src/config/load.js';

const SERVICES = 'services:\n  backend:\n    instances: ["http://backend:8000"]\n';

function problems(text: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseRoutesFile(text, env);
    return [];
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems;
  }
}

describe('routes file: what it may never do', () => {
  it('cannot read a secret or credential from the environment, wherever it tries', () => {
    const env = { JWT_SECRET: 's3cret-value-0123456789abcdef0123', REDIS_URL: 'redis://:pw@redis:6379', DB_PASSWORD: 'db-password-value', API_TOKEN: 'api-token-value', SIGNING_KEY: 'signing-key-value', OTEL_EXPORTER_OTLP_HEADERS: 'authorization=Bearer otel-header-value' };
    for (const name of Object.keys(env)) {
      const found = problems(`${SERVICES}routes:\n  - { name: a, path: /a, service: backend, headers: { x-probe: "\${${name}}" } }\n`, env);
      assert.equal(found.length, 1, `${name}: ${found.join('; ')}`);
      assert.match(found[0]!, new RegExp(`routes\\[0\\]\\.headers\\.x-probe: may not use \\$\\{${name}\\}`));
      assert.ok(!found[0]!.includes(env[name as keyof typeof env]), 'the value never appears in the message');
    }
    // Ordinary variables still work.
    assert.deepEqual(problems(`services:\n  backend:\n    instances: ["\${BACKEND_URL}"]\nroutes:\n  - { name: a, path: /a, service: backend }\n`, { BACKEND_URL: 'http://b:1' }), []);
  });

  it('cannot put an environment variable into a transform value, even a harmless one', () => {
    const found = problems(`${SERVICES}routes:\n  - name: a\n    path: /a\n    service: backend\n    transform: { response: { headers: { set: { X-Env: "\${HOSTNAME}" } } } }\n`, { HOSTNAME: 'gw-1' });
    assert.equal(found.length, 1);
    assert.match(found[0]!, /transform values cannot use \$\{HOSTNAME\}/);
  });

  it("cannot set or remove the gateway's CORS and HSTS answers through a response transform", () => {
    for (const field of ['Access-Control-Allow-Origin', 'access-control-allow-credentials', 'Strict-Transport-Security']) {
      for (const op of ['set', 'add']) {
        const found = problems(`${SERVICES}routes:\n  - name: a\n    path: /a\n    service: backend\n    transform: { response: { headers: { ${op}: { ${field}: "x" } } } }\n`);
        assert.equal(found.length, 1, `${op} ${field}`);
        assert.match(found[0]!, /set by the gateway/);
      }
      const removed = problems(`${SERVICES}routes:\n  - name: a\n    path: /a\n    service: backend\n    transform: { response: { headers: { remove: [${field}] } } }\n`);
      assert.match(removed[0] ?? '', /set by the gateway/);
    }
    // The same names stay allowed on the request side, where they mean nothing to browsers.
    assert.deepEqual(problems(`${SERVICES}routes:\n  - name: a\n    path: /a\n    service: backend\n    transform: { request: { headers: { remove: [Access-Control-Request-Method] } } }\n`), []);
  });

  it('cannot change the query parameter a subject check reads', () => {
    const route = (query: string) =>
      `${SERVICES}routes:\n  - name: a\n    path: /a\n    service: backend\n    subject: { query: resident_id }\n    transform: { request: { query: ${query} } }\n`;
    for (const query of ['{ rename: { pid: resident_id } }', '{ remove: [resident_id] }', '{ add: { resident_id: "{user.id}" } }']) {
      const found = problems(route(query));
      assert.equal(found.length, 1, query);
      assert.match(found[0]!, /the query parameter the subject check reads/);
    }
    assert.deepEqual(problems(route('{ rename: { q: search } }')), []);
    // Renaming the checked parameter away keeps the checked value: allowed.
    assert.deepEqual(problems(route('{ rename: { resident_id: rid } }')), []);
  });

  it('cannot name proxy credentials or HTTP2-Settings in a request transform', () => {
    for (const field of ['Proxy-Authorization', 'HTTP2-Settings']) {
      const found = problems(`${SERVICES}routes:\n  - name: a\n    path: /a\n    service: backend\n    transform: { request: { headers: { set: { ${field}: "x" } } } }\n`);
      assert.match(found[0] ?? '', /cannot be transformed/, field);
    }
  });
});
