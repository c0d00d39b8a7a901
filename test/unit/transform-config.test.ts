import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseRoutesFile } from '../../src/config/load.js';
import type { RoutesFile } from '../../src/config/routes-schema.js';
import type { Exchange } from '../../src/pipeline/exchange.js';
import { compileTemplate } from '../../src/pipeline/route-transform.js';

const SERVICES = 'services:\n  backend:\n    instances: ["http://backend:8000"]\n';

/** A routes file of one route `a` (matched by `match`, e.g. "path: /a") with the given transform YAML, indented under `transform:`. */
function fileWith(match: string, transform: string): string {
  const body = transform
    .trim()
    .split('\n')
    .map((line) => `      ${line}`)
    .join('\n');
  return `${SERVICES}routes:\n  - name: a\n    ${match}\n    service: backend\n    transform:\n${body}\n`;
}

function problemsOf(text: string): string[] {
  try {
    parseRoutesFile(text, {});
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err.problems;
  }
  assert.fail('the file was accepted');
}

function accepted(text: string): RoutesFile {
  return parseRoutesFile(text, {});
}

describe('transform config: framing and hop-by-hop headers are refused', () => {
  const cases: Array<[what: string, transform: string, field: string]> = [
    ['Content-Length in request set', 'request:\n  headers:\n    set: { Content-Length: "0" }', 'routes[0].transform.request.headers.set.Content-Length'],
    ['Transfer-Encoding in request add', 'request:\n  headers:\n    add: { Transfer-Encoding: chunked }', 'routes[0].transform.request.headers.add.Transfer-Encoding'],
    ['Host in request remove', 'request:\n  headers:\n    remove: [X-Debug, Host]', 'routes[0].transform.request.headers.remove[1]'],
    ['Host in request set', 'request:\n  headers:\n    set: { Host: internal.example }', 'routes[0].transform.request.headers.set.Host'],
    ['content-length in request remove, lower case', 'request:\n  headers:\n    remove: [content-length]', 'routes[0].transform.request.headers.remove[0]'],
    ['HOST in request add, upper case', 'request:\n  headers:\n    add: { HOST: evil.example }', 'routes[0].transform.request.headers.add.HOST'],
    ['Transfer-Encoding in request remove', 'request:\n  headers:\n    remove: [Transfer-Encoding]', 'routes[0].transform.request.headers.remove[0]'],
    ['Content-Length in response set', 'response:\n  headers:\n    set: { Content-Length: "10" }', 'routes[0].transform.response.headers.set.Content-Length'],
    ['Transfer-Encoding in response add', 'response:\n  headers:\n    add: { transfer-encoding: chunked }', 'routes[0].transform.response.headers.add.transfer-encoding'],
    ['Content-Length in response remove', 'response:\n  headers:\n    remove: [Content-Length]', 'routes[0].transform.response.headers.remove[0]'],
    ['Connection in request set', 'request:\n  headers:\n    set: { Connection: close }', 'routes[0].transform.request.headers.set.Connection'],
  ];

  for (const [what, transform, field] of cases) {
    it(`${what}: refused, naming ${field}`, () => {
      const problems = problemsOf(fileWith('path: /a', transform));
      assert.equal(problems.length, 1, problems.join('\n'));
      assert.ok(problems[0]!.startsWith(`${field}: `), `expected a problem at ${field}, got: ${problems[0]}`);
    });
  }

  it('says why for a framing header in remove', () => {
    const [problem] = problemsOf(fileWith('path: /a', 'request:\n  headers:\n    remove: [Host]'));
    assert.match(problem!, /framing and hop-by-hop headers .* cannot be transformed/);
  });

  // zod reports a record key that fails its refinement as "Invalid key in record"; load.ts does
  // not unwrap the nested issue, so an operator is told which field, but not why.
  it('says why for a framing header in set and add', () => {
    for (const ops of ['set: { Content-Length: "0" }', 'add: { Transfer-Encoding: chunked }']) {
      const [problem] = problemsOf(fileWith('path: /a', `request:\n  headers:\n    ${ops}`));
      assert.match(problem!, /framing and hop-by-hop headers .* cannot be transformed/);
    }
  });
});

describe('transform config: placeholders', () => {
  it('refuses {user.ID} in a header, naming the field and the placeholder', () => {
    const problems = problemsOf(fileWith('path: /a', 'request:\n  headers:\n    set: { X-Tenant: "clinic-{user.ID}" }'));
    assert.equal(problems.length, 1, problems.join('\n'));
    assert.match(problems[0]!, /^routes\[0\]\.transform\.request\.headers\.set\.X-Tenant: unknown placeholder \{user\.ID\}/);
  });

  it('refuses {user.ID} in a query parameter and in a response header', () => {
    assert.match(problemsOf(fileWith('path: /a', 'request:\n  query:\n    add: { who: "{user.ID}" }'))[0]!, /^routes\[0\]\.transform\.request\.query\.add\.who: unknown placeholder \{user\.ID\}/);
    assert.match(problemsOf(fileWith('path: /a', 'response:\n  headers:\n    add: { X-Who: "{user.ID}" }'))[0]!, /^routes\[0\]\.transform\.response\.headers\.add\.X-Who: unknown placeholder \{user\.ID\}/);
  });

  it('refuses other unknown placeholders', () => {
    for (const bad of ['{user.email}', '{request.path}', '{param.}', '{client.port}']) {
      const problems = problemsOf(fileWith('pattern: /p/:id', `request:\n  headers:\n    add: { X-A: "v-${bad}" }`));
      assert.equal(problems.length, 1, `${bad}: ${problems.join('\n')}`);
      assert.ok(problems[0]!.includes(`unknown placeholder ${bad}`), `${bad}: ${problems[0]}`);
    }
  });

  it('refuses {param.nope} when the pattern has no :nope', () => {
    const problems = problemsOf(fileWith('pattern: /patients/:patientId', 'request:\n  headers:\n    set: { X-Patient: "{param.nope}" }'));
    assert.deepEqual(problems, ["routes[0].transform: uses {param.nope}, which the route's pattern does not capture"]);
  });

  it('refuses {param.nope} in a query parameter too, and any {param.x} on a route without a pattern', () => {
    assert.deepEqual(problemsOf(fileWith('pattern: /patients/:patientId', 'request:\n  query:\n    add: { p: "{param.nope}" }')), [
      "routes[0].transform: uses {param.nope}, which the route's pattern does not capture",
    ]);
    assert.deepEqual(problemsOf(fileWith('prefix: /patients', 'response:\n  headers:\n    set: { X-P: "{param.id}" }')), [
      "routes[0].transform: uses {param.id}, which the route's pattern does not capture",
    ]);
  });

  it('accepts every known placeholder and a captured parameter', () => {
    const file = accepted(
      fileWith(
        'pattern: /clinics/:clinicId/patients/:patientId',
        [
          'request:',
          '  headers:',
          '    set: { X-All: "{user.id}|{user.role}|{user.phi_access_level}|{request.id}|{route.name}|{client.ip}|{param.clinicId}|{param.patientId}" }',
          '    add: { X-Via: gw }',
          '    remove: [X-Debug]',
          '  query:',
          '    rename: { q: search }',
          '    remove: [debug]',
          '    add: { source: gateway, caller: "{user.role}" }',
          'response:',
          '  headers:',
          '    set: { Cache-Control: no-store }',
          '    remove: [X-Internal]',
          'mapErrors: true',
        ].join('\n'),
      ),
    );
    const transform = file.routes[0]!.transform!;
    assert.equal(transform.mapErrors, true);
    assert.deepEqual(transform.request!.query!.rename, { q: 'search' });
  });

  it('refuses an unknown field inside transform', () => {
    assert.match(problemsOf(fileWith('path: /a', 'request:\n  headers:\n    replace: { X-A: b }'))[0]!, /^routes\[0\]\.transform\.request\.headers: unknown field "replace"/);
    assert.match(problemsOf(fileWith('path: /a', 'mapErrors: yes-please'))[0]!, /^routes\[0\]\.transform\.mapErrors: /);
  });
});

describe('compiled templates', () => {
  const exchange = (identity: Record<string, string> | null, extra: Record<string, unknown> = {}): Exchange =>
    ({
      id: 'req-1',
      clientIp: '10.0.0.7',
      route: { name: 'clinic-records' },
      params: { patientId: 'p-9' },
      identity: identity === null ? null : { userId: identity.userId, role: identity.role, phiAccessLevel: identity.phiAccessLevel },
      ...extra,
    }) as unknown as Exchange;

  it('fills every placeholder', () => {
    const template = compileTemplate('{user.id}|{user.role}|{user.phi_access_level}|{request.id}|{route.name}|{client.ip}|{param.patientId}');
    assert.equal(template(exchange({ userId: 'u-1', role: 'resident', phiAccessLevel: 'none' })), 'u-1|resident|none|req-1|clinic-records|10.0.0.7|p-9');
  });

  it('strips control characters from placeholder values, never from the literal text', () => {
    const template = compileTemplate('clinic-{user.id}\tend');
    assert.equal(template(exchange({ userId: 'u-1\r\nX-Injected: 1\u0000\u007f', role: 'resident', phiAccessLevel: 'none' })), 'clinic-u-1X-Injected: 1\tend');
  });

  it('has no value when a user field is missing (a public route), but does for the other fields', () => {
    assert.equal(compileTemplate('clinic-{user.id}')(exchange(null)), undefined);
    assert.equal(compileTemplate('{route.name}@{client.ip}')(exchange(null)), 'clinic-records@10.0.0.7');
    assert.equal(compileTemplate('no placeholders {here}')(exchange(null)), 'no placeholders {here}');
  });
});
