import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { DEFAULT_PERMISSIONS } from '../../src/auth/permissions.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, rawRequest, read, type Answer } from '../helpers/http.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type ReceivedRequest, type TestUpstream } from '../helpers/upstream.js';

/** Subjects are UUIDs, as the auth service issues them. */
const X = '9b2f3c1a-2d4e-4f6a-8b7c-1d2e3f4a5b6c';
const Y = '0f1e2d3c-4b5a-4968-8776-655443322110';
const ADMIN = '1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d';
const PROVIDER = '7c9e6679-7425-40de-944b-e07fc1f90ae7';

const ROUTES = [
  { name: 'chat', path: '/api/v1/chat/history', methods: ['GET'], permission: 'chat:read' },
  { name: 'chat-bg', path: '/bg/chat/history', methods: ['GET'], permission: 'chat:read', breakGlass: true },
  { name: 'records-write', path: '/api/v1/records', methods: ['POST'], permission: 'records:write' },
  { name: 'care-team', path: '/api/v1/care/team', roles: ['health_provider', 'care_staff'] },
  { name: 'care-plan', path: '/api/v1/care/plan', roles: ['care_staff', 'resident'], permission: 'care:coordinate' },
  { name: 'revoke-like', path: '/api/v1/admin/tokens', permission: 'tokens:revoke' },
  {
    name: 'resident-records',
    pattern: '/api/v1/residents/:residentId/records',
    permission: 'records:read',
    breakGlass: true,
    subject: { param: 'residentId', unlessPermission: 'records:read:any' },
  },
  { name: 'records-by-query', path: '/api/v1/records/search', permission: 'records:read', subject: { query: 'resident_id', unlessPermission: 'records:read:any' } },
  { name: 'own-profile', pattern: '/api/v1/profiles/:userId', subject: { param: 'userId' } },
];

async function tokenFor(role: string, sub: string): Promise<string> {
  return signToken({ sub, role, claims: { phi_access_level: role === 'admin' ? 'break_glass' : 'full' } });
}

function get(gw: TestGateway, path: string, token: string | null, headers: Record<string, string> = {}, method: 'GET' | 'POST' = 'GET'): Promise<Answer> {
  const auth: Record<string, string> = token === null ? {} : { authorization: `Bearer ${token}` };
  return read(request(`${gw.url}${path}`, { method, headers: { ...auth, ...headers } }));
}

function values(seen: ReceivedRequest, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) if (seen.rawHeaders[i]!.toLowerCase() === name) out.push(seen.rawHeaders[i + 1]!);
  return out;
}

describe('RBAC: roles, permissions, subject match and break-glass', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, ROUTES));
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  /** Expects 200 and exactly one more upstream request, for the given path. */
  async function allowed(path: string, token: string, headers: Record<string, string> = {}, method: 'GET' | 'POST' = 'GET'): Promise<ReceivedRequest> {
    const before = upstream.received.length;
    const res = await get(gw, path, token, headers, method);
    assert.equal(res.statusCode, 200, `${method} ${path}: ${res.text}`);
    assert.equal(upstream.received.length, before + 1);
    return upstream.received.at(-1)!;
  }

  /** Expects a 403 with the code, and that the upstream received nothing. */
  async function refused(path: string, token: string, code = 'GW_FORBIDDEN', headers: Record<string, string> = {}, method: 'GET' | 'POST' = 'GET'): Promise<string> {
    const before = upstream.received.length;
    const res = await get(gw, path, token, headers, method);
    const problem = expectProblem(res, 403, code);
    assert.equal(upstream.received.length, before, `${method} ${path}: the upstream must receive nothing`);
    return problem.detail;
  }

  describe('the default permission matrix', () => {
    it('the defaults are as the spec lays them out', () => {
      assert.ok(DEFAULT_PERMISSIONS.resident.includes('chat:read'));
      assert.ok(!DEFAULT_PERMISSIONS.admin.includes('chat:read'));
      for (const clinical of ['chat:read', 'records:read', 'records:write']) assert.ok(!DEFAULT_PERMISSIONS.admin.includes(clinical), `admin holds ${clinical}`);
    });

    const chat: Array<[role: string, ok: boolean]> = [
      ['system', true],
      ['health_provider', true],
      ['care_staff', true],
      ['family_member', true],
      ['resident', true],
      ['admin', false],
    ];
    for (const [role, ok] of chat) {
      it(`${role} ${ok ? 'reads' : 'may not read'} the chat history (chat:read)`, async () => {
        const token = await tokenFor(role, `${role}-1`);
        if (ok) await allowed('/api/v1/chat/history?session_id=s-1', token);
        else assert.match(await refused('/api/v1/chat/history?session_id=s-1', token), /lacks the permission chat:read/);
      });
    }

    const write: Array<[role: string, ok: boolean]> = [
      ['health_provider', true],
      ['resident', true],
      ['care_staff', false],
      ['family_member', false],
      ['admin', false],
    ];
    for (const [role, ok] of write) {
      it(`${role} ${ok ? 'writes' : 'may not write'} records (records:write)`, async () => {
        const token = await tokenFor(role, `${role}-w`);
        if (ok) await allowed('/api/v1/records', token, {}, 'POST');
        else await refused('/api/v1/records', token, 'GW_FORBIDDEN', {}, 'POST');
      });
    }

    it('admin holds tokens:revoke; a clinical role does not', async () => {
      await allowed('/api/v1/admin/tokens', await tokenFor('admin', ADMIN));
      await refused('/api/v1/admin/tokens', await tokenFor('health_provider', PROVIDER));
    });

    it('a route naming roles admits those roles only', async () => {
      await allowed('/api/v1/care/team', await tokenFor('health_provider', PROVIDER));
      await allowed('/api/v1/care/team', await tokenFor('care_staff', 'staff-1'));
      assert.match(await refused('/api/v1/care/team', await tokenFor('resident', X)), /may not use this route/);
      await refused('/api/v1/care/team', await tokenFor('admin', ADMIN));
    });

    it('a route naming roles and a permission needs both', async () => {
      await allowed('/api/v1/care/plan', await tokenFor('care_staff', 'staff-1'));
      // In the roles, without care:coordinate.
      await refused('/api/v1/care/plan', await tokenFor('resident', X));
      // Not in the roles (and without the permission either).
      await refused('/api/v1/care/plan', await tokenFor('health_provider', PROVIDER));
    });
  });

  describe('subject match', () => {
    it('a resident reads their own records by path parameter, and nobody else\'s', async () => {
      const token = await tokenFor('resident', X);
      const seen = await allowed(`/api/v1/residents/${X}/records`, token);
      assert.equal(seen.url, `/api/v1/residents/${X}/records`);
      assert.match(await refused(`/api/v1/residents/${Y}/records`, token), /belongs to another user/);
    });

    it('the path parameter is compared after the path is made canonical', async () => {
      const token = await tokenFor('resident', X);
      // Raw request lines: an HTTP client would resolve the dot segments before sending.
      const raw = (path: string) => rawRequest(gw.port, `GET ${path} HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`);
      let before = upstream.received.length;
      // A dot segment walking from the resident's own record to another's is the other's record.
      expectProblem(await raw(`/api/v1/residents/${X}/../${Y}/records`), 403, 'GW_FORBIDDEN');
      expectProblem(await raw(`/api/v1/residents/${X}/%2E%2E/${Y}/records`), 403, 'GW_FORBIDDEN');
      assert.equal(upstream.received.length, before);
      // Doubled slashes and a dot segment still name the resident's own record, which is what the upstream gets.
      const own = await raw(`/api/v1//residents/${X}/./records`);
      assert.equal(own.statusCode, 200, own.text);
      assert.equal(upstream.received.length, before + 1);
      assert.equal(upstream.received.at(-1)!.url, `/api/v1/residents/${X}/records`);
      // Another's record reached through the resident's id is still the other's.
      before = upstream.received.length;
      const detour = await raw(`/api/v1/residents/${Y}/../${X}/records`);
      assert.equal(detour.statusCode, 200, detour.text);
      assert.equal(upstream.received.at(-1)!.url, `/api/v1/residents/${X}/records`);
      assert.equal(upstream.received.length, before + 1);
    });

    it('family members and care staff, without records:read:any, read only records filed under their own id', async () => {
      await refused(`/api/v1/residents/${X}/records`, await tokenFor('family_member', Y));
      await refused(`/api/v1/residents/${X}/records`, await tokenFor('care_staff', Y));
      await allowed(`/api/v1/residents/${Y}/records`, await tokenFor('family_member', Y));
    });

    it('a health provider with records:read:any reads anybody\'s records', async () => {
      const token = await tokenFor('health_provider', PROVIDER);
      await allowed(`/api/v1/residents/${X}/records`, token);
      await allowed(`/api/v1/residents/${Y}/records`, token);
      await allowed(`/api/v1/records/search?resident_id=${X}`, token);
      await allowed('/api/v1/records/search', token);
    });

    it('the query variant: ?resident_id= must be the caller', async () => {
      const token = await tokenFor('resident', X);
      const seen = await allowed(`/api/v1/records/search?resident_id=${X}&from=2025-01-01`, token);
      assert.equal(seen.url, `/api/v1/records/search?resident_id=${X}&from=2025-01-01`);
      await refused(`/api/v1/records/search?resident_id=${Y}`, token);
    });

    it('the query variant: a missing, empty or repeated parameter matches nobody', async () => {
      const token = await tokenFor('resident', X);
      await refused('/api/v1/records/search', token);
      await refused('/api/v1/records/search?from=2025-01-01', token);
      await refused('/api/v1/records/search?resident_id=', token);
      await refused(`/api/v1/records/search?resident_id=${X}&resident_id=${Y}`, token);
      await refused(`/api/v1/records/search?resident_id=${Y}&resident_id=${X}`, token);
      await refused(`/api/v1/records/search?resident_id=${X}&resident_id=${X}`, token);
      // An encoded name is the same parameter to every query parser: still repeated.
      await refused(`/api/v1/records/search?resident_id=${X}&resident%5Fid=${Y}`, token);
    });

    it('a subject without unlessPermission binds every role, however privileged', async () => {
      await allowed(`/api/v1/profiles/${PROVIDER}`, await tokenFor('health_provider', PROVIDER));
      await refused(`/api/v1/profiles/${X}`, await tokenFor('health_provider', PROVIDER));
      await refused(`/api/v1/profiles/${X}`, await tokenFor('system', 'svc-1'));
    });

    it('the subject is the token\'s, never the client\'s X-User-ID', async () => {
      const token = await tokenFor('resident', X);
      await refused(`/api/v1/residents/${Y}/records`, token, 'GW_FORBIDDEN', { 'x-user-id': Y, 'x-user-role': 'health_provider', 'x-phi-access-level': 'full' });
      const seen = await allowed(`/api/v1/residents/${X}/records`, token, { 'x-user-id': Y, 'x-user-role': 'health_provider', 'x-phi-access-level': 'full' });
      assert.deepEqual(values(seen, 'x-user-id'), [X]);
      assert.deepEqual(values(seen, 'x-user-role'), ['resident']);
      assert.deepEqual(values(seen, 'x-phi-access-level'), ['full']);
    });
  });

  describe('break-glass', () => {
    it('an admin without X-Break-Glass-Reason is refused, and the upstream receives nothing', async () => {
      const token = await tokenFor('admin', ADMIN);
      const detail = await refused('/bg/chat/history', token, 'GW_BREAK_GLASS_REASON_REQUIRED');
      assert.match(detail, /x-break-glass-reason/i);
    });

    it('a blank or overlong reason is no reason', async () => {
      const token = await tokenFor('admin', ADMIN);
      await refused('/bg/chat/history', token, 'GW_BREAK_GLASS_REASON_REQUIRED', { 'x-break-glass-reason': '   ' });
      await refused('/bg/chat/history', token, 'GW_BREAK_GLASS_REASON_REQUIRED', { 'x-break-glass-reason': 'r'.repeat(501) });
    });

    it('an admin with a reason passes, the upstream hears the admin, and a WARN line flags it', async () => {
      const token = await tokenFor('admin', ADMIN);
      const before = upstream.received.length;
      const res = await get(gw, '/bg/chat/history?session_id=s-1', token, { 'x-break-glass-reason': 'patient unconscious, ER case 4411' });
      assert.equal(res.statusCode, 200, res.text);
      assert.equal(upstream.received.length, before + 1);
      const seen = upstream.received.at(-1)!;
      assert.deepEqual(values(seen, 'x-user-role'), ['admin']);
      assert.deepEqual(values(seen, 'x-user-id'), [ADMIN]);
      const id = res.headers['x-request-id'];
      const line = gw.logs.find((l) => l.request_id === id && l.break_glass === true);
      assert.ok(line !== undefined, 'no break_glass log line for the request');
      assert.equal(line.level, 'WARN');
      assert.equal(line.user_id, ADMIN);
      assert.equal(line.route, 'chat-bg');
    });

    it('the upstream hears the admin whatever role the client claims', async () => {
      const token = await tokenFor('admin', ADMIN);
      const seen = await allowed('/bg/chat/history', token, { 'x-break-glass-reason': 'audit', 'x-user-role': 'health_provider', 'x-user-id': PROVIDER, 'x-phi-access-level': 'full' });
      assert.deepEqual(values(seen, 'x-user-role'), ['admin']);
      assert.deepEqual(values(seen, 'x-user-id'), [ADMIN]);
      assert.deepEqual(values(seen, 'x-phi-access-level'), ['break_glass']);
    });

    it('an admin on a break-glass subject route reaches any record with a reason', async () => {
      const token = await tokenFor('admin', ADMIN);
      await refused(`/api/v1/residents/${X}/records`, token, 'GW_BREAK_GLASS_REASON_REQUIRED');
      await allowed(`/api/v1/residents/${X}/records`, token, { 'x-break-glass-reason': 'court order 17' });
    });

    it('an admin on a route without breakGlass is refused even with a reason', async () => {
      const token = await tokenFor('admin', ADMIN);
      await refused('/api/v1/chat/history', token, 'GW_FORBIDDEN', { 'x-break-glass-reason': 'patient unconscious' });
      await refused('/api/v1/records', token, 'GW_FORBIDDEN', { 'x-break-glass-reason': 'patient unconscious' }, 'POST');
      await refused(`/api/v1/profiles/${X}`, token, 'GW_FORBIDDEN', { 'x-break-glass-reason': 'patient unconscious' });
    });

    it('a reason gets no other role past the policy', async () => {
      const reason = { 'x-break-glass-reason': 'emergency' };
      await refused(`/api/v1/residents/${Y}/records`, await tokenFor('resident', X), 'GW_FORBIDDEN', reason);
      await refused(`/api/v1/residents/${X}/records`, await tokenFor('family_member', Y), 'GW_FORBIDDEN', { ...reason, 'x-user-role': 'admin' });
      await refused(`/api/v1/residents/${Y}/records`, await tokenFor('care_staff', X), 'GW_FORBIDDEN', { ...reason, 'x-user-role': 'admin' });
    });

    it('a role that passes the policy needs no reason and is not flagged', async () => {
      const res = await get(gw, '/bg/chat/history', await tokenFor('resident', X));
      assert.equal(res.statusCode, 200, res.text);
      const id = res.headers['x-request-id'];
      assert.ok(!gw.logs.some((l) => l.request_id === id && l.break_glass === true));
    });
  });
});

describe('RBAC: a permissions map in the routes file replaces a role\'s defaults', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway({
      ...routesFor(upstream.url, ROUTES),
      permissions: {
        family_member: ['records:read'],
        care_staff: ['chat:read', 'records:read', 'records:read:any'],
      },
    });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('family_member loses chat:read, which its list no longer names', async () => {
    const before = upstream.received.length;
    const res = await get(gw, '/api/v1/chat/history', await tokenFor('family_member', Y));
    assert.match(expectProblem(res, 403, 'GW_FORBIDDEN').detail, /lacks the permission chat:read/);
    assert.equal(upstream.received.length, before);
    // What the list still names works.
    assert.equal((await get(gw, `/api/v1/residents/${Y}/records`, await tokenFor('family_member', Y))).statusCode, 200);
  });

  it('roles the map does not name keep their defaults', async () => {
    assert.equal((await get(gw, '/api/v1/chat/history', await tokenFor('resident', X))).statusCode, 200);
    assert.equal((await get(gw, '/api/v1/records', await tokenFor('resident', X), {}, 'POST')).statusCode, 200);
    expectProblem(await get(gw, '/api/v1/chat/history', await tokenFor('admin', ADMIN)), 403, 'GW_FORBIDDEN');
  });

  it('a permission the map grants takes effect: care_staff with records:read:any reads anybody\'s records', async () => {
    const token = await tokenFor('care_staff', 'staff-1');
    assert.equal((await get(gw, `/api/v1/residents/${X}/records`, token)).statusCode, 200);
    assert.equal((await get(gw, `/api/v1/records/search?resident_id=${Y}`, token)).statusCode, 200);
    // The replaced list drops care:coordinate, which the defaults gave care_staff.
    expectProblem(await get(gw, '/api/v1/care/plan', token), 403, 'GW_FORBIDDEN');
  });
});
