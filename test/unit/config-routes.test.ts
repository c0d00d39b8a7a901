import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { ConfigError, loadRoutesFile, parseRoutesFile } from '../../src/config/load.js';

const SERVICES = 'services:\n  backend:\n    instances: ["http://backend:8000"]\n';

function problemsOf(text: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseRoutesFile(text, env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err.problems;
  }
  assert.fail('the file was accepted');
}

describe('parseRoutesFile: an invalid file is refused with the field that is wrong', () => {
  const cases: Array<[what: string, yaml: string, expected: string | RegExp]> = [
    [
      'a route naming an unknown service',
      `${SERVICES}routes:\n  - { name: a, path: /a, service: backend }\n  - { name: b, path: /b, service: backend }\n  - { name: c, path: /c, service: chat }\n`,
      'routes[2].service: unknown service "chat"',
    ],
    ['a misspelt route field', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, metods: [GET] }\n`, /^routes\[0\]: unknown field "metods"/],
    ['a misspelt service field', 'services:\n  backend:\n    instances: ["http://backend:8000"]\n    helthPath: /h\nroutes:\n  - { name: a, path: /a, service: backend }\n', /^services\.backend: unknown field "helthPath"/],
    ['a misspelt top-level field', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend }\nroute: []\n`, /^\(file\): unknown field "route"/],
    ['both path and prefix', `${SERVICES}routes:\n  - { name: a, path: /a, prefix: /a, service: backend }\n`, /^routes\[0\]\.prefix: .*exactly one of path/],
    ['prefix and pattern', `${SERVICES}routes:\n  - { name: a, prefix: /a, pattern: /a/:id, service: backend }\n`, /^routes\[0\]\.pattern: .*exactly one of path/],
    ['none of path, prefix, pattern', `${SERVICES}routes:\n  - { name: a, service: backend }\n`, /^routes\[0\]\.path: .*exactly one of path/],
    ['an unknown role', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, roles: [health_provider, doctor] }\n`, /^routes\[0\]\.roles\[1\]: roles are system, admin, health_provider/],
    ['an unknown method', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, methods: [GET, FETCH] }\n`, /^routes\[0\]\.methods\[1\]: methods are GET/],
    ['an unknown auth mode', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, auth: optional }\n`, /^routes\[0\]\.auth: auth is "required" or "public"/],
    ['a rewrite using a parameter the pattern lacks', `${SERVICES}routes:\n  - { name: a, pattern: /p/:patientId, rewrite: /r/:recordId, service: backend }\n`, 'routes[0].rewrite: uses :recordId, which the pattern does not capture'],
    ['a service without instances', 'services:\n  backend:\n    healthPath: /health\nroutes:\n  - { name: a, path: /a, service: backend }\n', 'services.backend.instances: a service lists its instances or names a discovery host, exactly one of the two'],
    ['a service with an empty instance list', 'services:\n  backend:\n    instances: []\nroutes:\n  - { name: a, path: /a, service: backend }\n', /^services\.backend\.instances: .*at least one/],
    ['an instance URL with a path', 'services:\n  backend:\n    instances: ["http://ok:1", "http://backend:8000/api"]\nroutes:\n  - { name: a, path: /a, service: backend }\n', /^services\.backend\.instances\[1\]: instances are origins/],
    ['an instance URL with credentials', 'services:\n  backend:\n    instances: ["http://user:pw@backend:8000"]\nroutes:\n  - { name: a, path: /a, service: backend }\n', /^services\.backend\.instances\[0\]: instances are origins/],
    ['an instance URL that is not http', 'services:\n  backend:\n    instances: ["ftp://backend"]\nroutes:\n  - { name: a, path: /a, service: backend }\n', /^services\.backend\.instances\[0\]: /],
    ['accepts naming something that is not a media type', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, accepts: [application/json, json] }\n`, /^routes\[0\]\.accepts\[1\]: accepts lists media types/],
    ['a duplicate route name', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend }\n  - { name: a, path: /b, service: backend }\n`, 'routes[1].name: duplicate route name "a" (also routes[0])'],
    ['a route taking over /health', `${SERVICES}routes:\n  - { name: a, prefix: /health, service: backend }\n`, /^routes\[0\]\.prefix: would take over \/health/],
    ['a public route with roles', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, auth: public, roles: [admin] }\n`, /^routes\[0\]\.roles: a public route cannot require roles/],
    ['a path with a dot segment', `${SERVICES}routes:\n  - { name: a, path: /a/../b, service: backend }\n`, /^routes\[0\]\.path: /],
    ['no routes', SERVICES, 'routes: is required'],
    ['an unset variable without default', 'services:\n  backend:\n    instances: ["${CHAT_HISTORY_URL}"]\nroutes:\n  - { name: a, path: /a, service: backend }\n', /^services\.backend\.instances\[0\]: uses \$\{CHAT_HISTORY_URL\}, which is not set/],
  ];

  for (const [what, yaml, expected] of cases) {
    it(what, () => {
      const problems = problemsOf(yaml);
      assert.equal(problems.length, 1, problems.join('\n'));
      if (typeof expected === 'string') assert.equal(problems[0], expected);
      else assert.match(problems[0]!, expected);
    });
  }

  it('reports every field problem in the file at once', () => {
    const problems = problemsOf(
      'services:\n  backend:\n    instances: ["http://backend:8000/x"]\nroutes:\n  - { name: a, path: /a, service: backend, roles: [doctor] }\n  - { name: b, path: /b, service: backend, methods: [FETCH] }\n',
    );
    assert.deepEqual(problems.map((p) => p.split(':')[0]).sort(), ['routes[0].roles[0]', 'routes[1].methods[0]', 'services.backend.instances[0]']);
  });

  it('a value of the wrong type is reported as the wrong type, not as missing', () => {
    const problems = problemsOf(`${SERVICES}routes:\n  - { name: a, path: /a, service: backend, timeoutMs: "5000" }\n`);
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^routes\[0\]\.timeoutMs: /);
    assert.doesNotMatch(problems[0]!, /is required/, `a present but mistyped field is reported as missing: ${problems[0]}`);
    assert.match(problems[0]!, /number/);
  });

  // The lines where the mistake is, or where a parser first notices it.
  for (const [what, yaml, lines] of [
    ['a YAML indentation error', `${SERVICES}routes:\n  - name: a\n    path: /a\n   service: backend\n`, [7]],
    ['an unclosed YAML flow sequence', `services:\n  backend:\n    instances: ["http://backend:8000"\nroutes: []\n`, [3, 4]],
    ['a duplicate YAML key', `${SERVICES}routes:\n  - name: a\n    path: /a\n    path: /b\n    service: backend\n`, [7]],
  ] as const) {
    it(`${what} is a YAML syntax error that says on which line`, () => {
      const problems = problemsOf(yaml);
      assert.ok(problems.length >= 1);
      assert.match(problems[0]!, /^YAML syntax: /);
      // Without a line, the operator of a long routes file cannot find the mistake.
      const line = /\bline (\d+)\b/.exec(problems[0]!);
      assert.ok(line !== null, `no line number in: ${problems.join(' | ')}`);
      assert.ok((lines as readonly number[]).includes(Number(line[1])), `line ${line[1]} is not where the mistake is: ${problems[0]}`);
    });
  }

  it('names the file when loaded from disk, and ROUTES_FILE when it cannot be read', async () => {
    await assert.rejects(loadRoutesFile('/nonexistent/routes.yaml', {}), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.problems[0]!, /^ROUTES_FILE: cannot read "\/nonexistent\/routes\.yaml" \(ENOENT\)/);
      return true;
    });
  });
});

describe('parseRoutesFile: auth flows and authorization fields are checked', () => {
  const cases: Array<[what: string, yaml: string, expected: string | RegExp]> = [
    [
      'a revoke route with a service',
      `${SERVICES}routes:\n  - { name: a, path: /a, service: backend }\n  - { name: revoke, path: /revocations, methods: [POST], action: revoke, service: backend }\n`,
      'routes[1].service: a revoke route is answered by the gateway: remove service',
    ],
    ['a proxied route without a service', `${SERVICES}routes:\n  - { name: a, path: /a }\n`, 'routes[0].service: service is required (the service that answers this route)'],
    ['a login route without a service', `${SERVICES}routes:\n  - { name: login, path: /login, action: login, auth: public }\n`, /^routes\[0\]\.service: service is required/],
    [
      'a subject.param the pattern does not capture',
      `${SERVICES}routes:\n  - { name: a, pattern: /residents/:residentId/records, service: backend, subject: { param: patientId } }\n`,
      'routes[0].subject.param: the pattern captures no :patientId',
    ],
    [
      'a subject.param on a route matched by exact path',
      `${SERVICES}routes:\n  - { name: a, path: /residents/records, service: backend, subject: { param: residentId } }\n`,
      'routes[0].subject.param: the pattern captures no :residentId',
    ],
    ['a subject naming neither param nor query', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, subject: { unlessPermission: records:read:any } }\n`, /^routes\[0\]\.subject: subject names exactly one of param/],
    [
      'a public route with a permission',
      `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, auth: public, permission: records:read }\n`,
      'routes[0].permission: a public route cannot require permission; set auth: required',
    ],
    ['a public route with a subject', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, auth: public, subject: { query: resident_id } }\n`, /^routes\[0\]\.subject: a public route cannot require subject/],
    ['a public logout route', `${SERVICES}routes:\n  - { name: a, path: /logout, service: backend, auth: public, action: logout }\n`, 'routes[0].auth: a logout route needs auth: required'],
    ['an unknown action', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, action: register }\n`, /^routes\[0\]\.action: action is login, refresh, logout or revoke/],
    ['an unknown role under permissions', `${SERVICES}permissions:\n  doctor: [records:read]\nroutes:\n  - { name: a, path: /a, service: backend }\n`, /^permissions: unknown field "doctor"/],
    [
      'a malformed permission under permissions',
      `${SERVICES}permissions:\n  resident: [chat:read, "Records:Read"]\nroutes:\n  - { name: a, path: /a, service: backend }\n`,
      /^permissions\.resident\[1\]: permissions are lower-case words joined by ":"/,
    ],
    ['a malformed route permission', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, permission: "records read" }\n`, /^routes\[0\]\.permission: permissions are lower-case words joined by ":"/],
    ['a permission with an empty part', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, permission: "records::read" }\n`, /^routes\[0\]\.permission: permissions are lower-case words/],
    [
      'a malformed subject.unlessPermission',
      `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, subject: { query: resident_id, unlessPermission: "records:read:" } }\n`,
      /^routes\[0\]\.subject\.unlessPermission: permissions are lower-case words/,
    ],
    ['a breakGlass that is not a boolean', `${SERVICES}routes:\n  - { name: a, path: /a, service: backend, breakGlass: "yes" }\n`, /^routes\[0\]\.breakGlass: /],
  ];

  for (const [what, yaml, expected] of cases) {
    it(what, () => {
      const problems = problemsOf(yaml);
      assert.equal(problems.length, 1, problems.join('\n'));
      if (typeof expected === 'string') assert.equal(problems[0], expected);
      else assert.match(problems[0]!, expected);
    });
  }

  it('the shipped config/routes.yaml declares the auth flows and the chat-history policy', async () => {
    const parsed = parseRoutesFile(await readFile('config/routes.yaml', 'utf8'), { AUTH_SERVICE_URL: 'http://127.0.0.1:8080' });
    assert.deepEqual(parsed.services['auth-rbac']!.instances, ['http://127.0.0.1:8080']);
    const byName = new Map(parsed.routes.map((r) => [r.name, r]));
    const login = byName.get('auth-login')!;
    assert.deepEqual([login.path, login.action, login.auth, login.service], ['/api/v1/auth/login', 'login', 'public', 'auth-rbac']);
    assert.deepEqual([byName.get('auth-refresh')!.action, byName.get('auth-refresh')!.auth], ['refresh', 'public']);
    assert.deepEqual([byName.get('auth-logout')!.action, byName.get('auth-logout')!.auth], ['logout', 'required']);
    const history = byName.get('chat-history')!;
    assert.deepEqual([history.permission, history.breakGlass, history.phi], ['chat:read', true, true]);
    const revoke = byName.get('gateway-revocations')!;
    assert.deepEqual([revoke.action, revoke.service, revoke.permission], ['revoke', undefined, 'tokens:revoke']);
  });

  it('accepts permissions, roles, subject and breakGlass together, with their defaults', () => {
    const parsed = parseRoutesFile(
      `${SERVICES}permissions:\n  family_member: [records:read]\nroutes:\n` +
        '  - { name: records, pattern: /residents/:residentId/records, service: backend, permission: records:read, breakGlass: true, subject: { param: residentId, unlessPermission: records:read:any } }\n' +
        '  - { name: by-query, path: /records, service: backend, roles: [resident, family_member], subject: { query: resident_id } }\n' +
        '  - { name: revoke, path: /revocations, methods: [POST], action: revoke, permission: tokens:revoke }\n',
      {},
    );
    assert.deepEqual(parsed.permissions, { family_member: ['records:read'] });
    assert.equal(parsed.routes[0]!.breakGlass, true);
    assert.deepEqual(parsed.routes[0]!.subject, { param: 'residentId', unlessPermission: 'records:read:any' });
    assert.equal(parsed.routes[1]!.breakGlass, false);
    assert.deepEqual(parsed.routes[1]!.subject, { query: 'resident_id' });
    assert.equal(parsed.routes[2]!.service, undefined);
    assert.equal(parsed.routes[2]!.auth, 'required');
  });
});

describe('parseRoutesFile: ${VAR} substitution', () => {
  const file = 'services:\n  backend:\n    instances: ["${BACKEND_URL:-http://backend:8000}"]\nroutes:\n  - name: a\n    path: /a\n    service: backend\n    headers: { X-Tenant: "${TENANT:-default-tenant}" }\n';

  it('takes the default when the variable is unset or empty', () => {
    for (const env of [{}, { BACKEND_URL: '', TENANT: '' }]) {
      const parsed = parseRoutesFile(file, env);
      assert.deepEqual(parsed.services.backend!.instances, ['http://backend:8000']);
      assert.deepEqual(parsed.routes[0]!.headers, { 'X-Tenant': 'default-tenant' });
    }
  });

  it('takes the variable when it is set', () => {
    const parsed = parseRoutesFile(file, { BACKEND_URL: 'http://10.0.0.7:9000', TENANT: 'north' });
    assert.deepEqual(parsed.services.backend!.instances, ['http://10.0.0.7:9000']);
    assert.deepEqual(parsed.routes[0]!.headers, { 'X-Tenant': 'north' });
  });

  it('substitutes inside a longer string', () => {
    const parsed = parseRoutesFile('services:\n  backend:\n    instances: ["http://${HOST:-backend}:${BACKEND_PORT:-8000}"]\nroutes:\n  - { name: a, path: /a, service: backend }\n', { HOST: 'chat-history' });
    assert.deepEqual(parsed.services.backend!.instances, ['http://chat-history:8000']);
  });

  it('a substituted value cannot inject YAML structure', () => {
    // Were the text substituted before parsing, this would make the route public.
    const injected = 'north"}\n    auth: public\n    roles: [admin]\n    x: {"y": "';
    const parsed = parseRoutesFile(file, { TENANT: injected });
    assert.equal(parsed.routes.length, 1);
    assert.equal(parsed.routes[0]!.auth, 'required');
    assert.equal(parsed.routes[0]!.roles, undefined);
    assert.deepEqual(parsed.routes[0]!.headers, { 'X-Tenant': injected });
  });

  it('an injected value in a validated field is refused as a value, not parsed as YAML', () => {
    const problems = problemsOf(file, { BACKEND_URL: 'http://backend:8000"]\nroutes: []\nx: ["' });
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^services\.backend\.instances\[0\]: instances are origins/);
  });

  it('a field that wants a number or a boolean takes a variable as one', () => {
    const typed =
      'services:\n  backend:\n    instances: ["http://backend:8000"]\n    maxConnections: ${POOL:-64}\n    healthCheck: ${CHECKS:-false}\n' +
      'routes:\n  - name: a\n    path: /a\n    service: backend\n    timeoutMs: ${ROUTE_TIMEOUT_MS:-5000}\n    phi: ${RECORDS_PHI}\n    rateLimit: { perMinute: "${A_LIMIT:-30}" }\n    headers: { x-api-version: "${API_VERSION:-2}" }\n';
    const parsed = parseRoutesFile(typed, { RECORDS_PHI: 'true', POOL: '128' });
    const route = parsed.routes[0]!;
    assert.equal(route.timeoutMs, 5000);
    assert.equal(route.phi, true);
    assert.equal(route.rateLimit?.perMinute, 30);
    assert.equal(parsed.services.backend!.maxConnections, 128);
    assert.equal(parsed.services.backend!.healthCheck, false);
    assert.deepEqual(route.headers, { 'x-api-version': '2' }, 'a field that wants text keeps it');
  });

  it('a variable that is not the number the field wants is refused naming the field', () => {
    const problems = problemsOf(`${SERVICES}routes:\n  - { name: a, path: /a, service: backend, timeoutMs: "\${ROUTE_TIMEOUT_MS}" }\n`, { ROUTE_TIMEOUT_MS: 'soon' });
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^routes\[0\]\.timeoutMs: /);
  });

  it('the shipped config/routes.yaml parses with its defaults', async () => {
    const parsed = parseRoutesFile(await readFile('config/routes.yaml', 'utf8'), {});
    assert.deepEqual(parsed.services['chat-history']!.instances, ['http://chat-history:8002']);
    const history = parsed.routes.find((r) => r.name === 'chat-history')!;
    assert.equal(history.path, '/api/v1/chat/history');
    assert.equal(history.rewrite, '/api/v1/history');
    assert.equal(history.auth, 'required');
  });
});
