import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor, type TestGateway, startTestGateway } from '../helpers/gateway.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type ReceivedRequest, type TestUpstream } from '../helpers/upstream.js';
import { rawExchange } from '../helpers/raw-http.js';

/** Field names at the upstream that claim to say who the caller is. */
function identityFields(seen: ReceivedRequest): string[] {
  const names: string[] = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) {
    const folded = seen.rawHeaders[i]!.toLowerCase().replace(/_/g, '-');
    if (folded.startsWith('x-user-') || folded.startsWith('x-phi-')) names.push(seen.rawHeaders[i]!);
  }
  return names;
}

function values(seen: ReceivedRequest, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) {
    if (seen.rawHeaders[i]!.toLowerCase() === name) out.push(seen.rawHeaders[i + 1]!);
  }
  return out;
}

describe('identity headers come from the verified token only', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'open', prefix: '/public', auth: 'public' },
        { name: 'records', prefix: '/records', auth: 'required' },
      ]),
    );
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('strips the spec\'s identity headers and every X-User-* / X-PHI-* field on a public route', async () => {
    const before = upstream.received.length;
    const res = await request(`${gw.url}/public/profile`, {
      headers: {
        'X-User-ID': 'admin-1',
        'X-User-Role': 'admin',
        'X-PHI-Access-Level': 'full',
        'X-User-Email': 'root@hospital.example',
        'X-Phi-Consent': 'granted',
        'x-uSeR-tEnAnT': 'other-tenant',
        'X-Request-Source': 'kept-as-control',
      },
    });
    assert.equal(res.statusCode, 200);
    await res.body.dump();
    assert.equal(upstream.received.length, before + 1);
    const seen = upstream.received.at(-1)!;
    assert.deepEqual(identityFields(seen), []);
    assert.equal(seen.headers['x-request-source'], 'kept-as-control');
  });

  it('strips every copy of a duplicated identity header', async () => {
    const res = await request(`${gw.url}/public/profile`, {
      headers: { 'x-user-id': ['admin-1', 'admin-2'], 'x-user-role': ['admin', 'system'], 'x-phi-access-level': ['full', 'full'] },
    });
    assert.equal(res.statusCode, 200);
    await res.body.dump();
    assert.deepEqual(identityFields(upstream.received.at(-1)!), []);
  });

  it('strips underscore spellings that CGI-style upstreams read as the same variable', async () => {
    // HTTP_X_USER_ID is what both X-User-ID and X-User_ID become in a CGI/WSGI environment.
    const { responses } = await rawExchange(
      gw.port,
      'GET /public/profile HTTP/1.1\r\nHost: gateway.test\r\nX-User_ID: admin-1\r\nX_User_Role: admin\r\nX-PHI_Access_Level: full\r\nConnection: close\r\n\r\n',
    );
    assert.equal(responses[0]!.status, 200);
    assert.deepEqual(identityFields(upstream.received.at(-1)!), []);
  });

  it('sends the token\'s identity, once, whatever the client claims and however it spells it', async () => {
    const token = await signToken({ sub: 'u-7', role: 'care_staff', claims: { phi_access_level: 'limited' } });
    const before = upstream.received.length;
    const { responses } = await rawExchange(
      gw.port,
      'GET /records/42 HTTP/1.1\r\nHost: gateway.test\r\n' +
        `Authorization: Bearer ${token}\r\n` +
        'X-User-ID: admin-1\r\nx-user-id: admin-2\r\nX-USER-ROLE: admin\r\nx-PHI-access-LEVEL: full\r\nX-User-Department: icu\r\n' +
        'Connection: close\r\n\r\n',
    );
    assert.equal(responses[0]!.status, 200, responses[0]!.body);
    assert.equal(upstream.received.length, before + 1);
    const seen = upstream.received.at(-1)!;
    assert.deepEqual(values(seen, 'x-user-id'), ['u-7']);
    assert.deepEqual(values(seen, 'x-user-role'), ['care_staff']);
    assert.deepEqual(values(seen, 'x-phi-access-level'), ['limited']);
    assert.equal(seen.headers['x-user-department'], undefined);
  });

  it('cannot get the verified identity dropped by naming it in Connection', async () => {
    const token = await signToken({ sub: 'u-8', role: 'resident' });
    const { responses } = await rawExchange(
      gw.port,
      'GET /records/43 HTTP/1.1\r\nHost: gateway.test\r\n' +
        `Authorization: Bearer ${token}\r\n` +
        'Connection: close, X-User-ID, X-User-Role, X-PHI-Access-Level\r\n' +
        'X-User-ID: admin-1\r\nX-User-Role: admin\r\nX-PHI-Access-Level: full\r\n\r\n',
    );
    assert.equal(responses[0]!.status, 200, responses[0]!.body);
    const seen = upstream.received.at(-1)!;
    assert.deepEqual(values(seen, 'x-user-id'), ['u-8']);
    assert.deepEqual(values(seen, 'x-user-role'), ['resident']);
    // A token without the claim gives the least access, never the client's word.
    assert.deepEqual(values(seen, 'x-phi-access-level'), ['none']);
  });

  it('refuses spoofed identity headers without a token and never calls the upstream', async () => {
    const before = upstream.received.length;
    const res = await request(`${gw.url}/records/44`, { headers: { 'x-user-id': 'admin-1', 'x-user-role': 'admin', 'x-phi-access-level': 'full' } });
    assert.equal(res.statusCode, 401);
    assert.equal(((await res.body.json()) as { code: string }).code, 'GW_AUTH_TOKEN_MISSING');
    assert.equal(upstream.received.length, before);
  });
});
