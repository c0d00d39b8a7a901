import assert from 'node:assert/strict';
import type { Server } from 'node:http';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { createAuditStandIn } from '../../dev/stand-ins/audit-logging.js';
import { createAuthStandIn, issueAccessToken, TEST_USERS } from '../../dev/stand-ins/auth-rbac.js';
import { createChatHistoryStandIn } from '../../dev/stand-ins/chat-history.js';
import { close, listen } from '../../dev/stand-ins/http-util.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, read } from '../helpers/http.js';
import { TEST_SECRET } from '../helpers/tokens.js';

/** The routes file the demo (and a deployment) uses, not a copy. */
const SHIPPED_ROUTES = fileURLToPath(new URL('../../config/routes.yaml', import.meta.url));
const SESSION = '3fa85f64-5717-4562-b3fc-2c963f66afa6';
const EXPIRES_IN = 7200;

/**
 * What `npm run demo` (dev/demo.ts) sets up, on free ports: the auth-rbac, chat-history and
 * audit-logging stand-ins, and the gateway on config/routes.yaml pointed at them, with in-memory
 * stores. The tests replay the curl lines the demo prints.
 */
describe('the demo: stand-ins + gateway on config/routes.yaml answer the printed curl lines', () => {
  const servers: Server[] = [];
  let gw: TestGateway;
  const provider = TEST_USERS.find((u) => u.email === 'provider@hospital.com')!;

  before(async () => {
    const auth = createAuthStandIn({ jwtSecret: TEST_SECRET, expiresIn: EXPIRES_IN });
    const chat = createChatHistoryStandIn();
    const audit = createAuditStandIn().server;
    const [authPort, chatPort, auditPort] = [await listen(auth, 0), await listen(chat, 0), await listen(audit, 0)];
    servers.push(auth, chat, audit);
    // The routes argument is unused: ROUTES_FILE points at the shipped file.
    gw = await startTestGateway('', {
      ROUTES_FILE: SHIPPED_ROUTES,
      JWT_EXPIRES_IN: String(EXPIRES_IN),
      AUTH_SERVICE_URL: `http://127.0.0.1:${authPort}`,
      AUDIT_SERVICE_URL: `http://127.0.0.1:${auditPort}`,
      CHAT_HISTORY_URL: `http://127.0.0.1:${chatPort}`,
      REDIS_URL: '',
    });
  });
  after(async () => {
    await gw?.close();
    await Promise.all(servers.map(close));
  });

  it('curl /health: 200', async () => {
    const res = await read(request(`${gw.url}/health`));
    assert.equal(res.statusCode, 200, res.text);
  });

  let accessToken = '';

  it('curl -X POST /api/v1/auth/login (provider@hospital.com, MFA): 200 with the spec\'s answer', async () => {
    const res = await read(
      request(`${gw.url}/api/v1/auth/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ email: provider.email, password: provider.password, mfa_token: provider.mfa }),
      }),
    );
    assert.equal(res.statusCode, 200, res.text);
    const body = JSON.parse(res.text) as { access_token: string; refresh_token: string; expires_in: number; user: Record<string, string> };
    assert.match(body.access_token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    assert.equal(typeof body.refresh_token, 'string');
    assert.equal(body.expires_in, EXPIRES_IN);
    assert.deepEqual(body.user, { id: provider.id, email: provider.email, role: 'health_provider' });
    accessToken = body.access_token;
  });

  it('curl /api/v1/chat/history with the printed token: 200, for the provider', async () => {
    // The demo prints a token it signs itself (no session), valid for EXPIRES_IN.
    const token = await issueAccessToken(provider, { jwtSecret: TEST_SECRET, expiresIn: EXPIRES_IN });
    const res = await read(request(`${gw.url}/api/v1/chat/history?session_id=${SESSION}`, { headers: { authorization: `Bearer ${token}` } }));
    assert.equal(res.statusCode, 200, res.text);
    const body = JSON.parse(res.text) as { session_id: string; user_id: string; role: string; messages: unknown[] };
    assert.equal(body.session_id, SESSION);
    assert.equal(body.user_id, provider.id);
    assert.equal(body.role, 'health_provider');
    assert.ok(body.messages.length > 0);
  });

  it('curl -N /api/v1/chat/stream with the printed token: the answer as server-sent events, every word of it', async () => {
    const token = await issueAccessToken(provider, { jwtSecret: TEST_SECRET, expiresIn: EXPIRES_IN });
    const res = await read(request(`${gw.url}/api/v1/chat/stream?session_id=${SESSION}`, { headers: { authorization: `Bearer ${token}` } }));
    assert.equal(res.statusCode, 200, res.text);
    assert.match(String(res.headers['content-type']), /^text\/event-stream/);
    const words = [...res.text.matchAll(/^data: (\{"text".*\})$/gm)].map((m) => (JSON.parse(m[1]!) as { text: string }).text);
    assert.equal(words.join(''), 'Your next appointment is on Tuesday at 10:00.');
    assert.match(res.text, /event: done/);
  });

  it('curl /api/v1/chat/history with the token from the login: 200 (its session is checked with auth-rbac)', async () => {
    assert.notEqual(accessToken, '', 'the login test must run first');
    const res = await read(request(`${gw.url}/api/v1/chat/history?session_id=${SESSION}`, { headers: { authorization: `Bearer ${accessToken}` } }));
    assert.equal(res.statusCode, 200, res.text);
    assert.equal((JSON.parse(res.text) as { user_id: string }).user_id, provider.id);
  });

  it('curl -i /api/v1/chat/history without a token: 401 with a Bearer challenge', async () => {
    const res = await read(request(`${gw.url}/api/v1/chat/history?session_id=${SESSION}`));
    expectProblem(res, 401, 'GW_AUTH_TOKEN_MISSING');
    assert.match(String(res.headers['www-authenticate']), /^Bearer /);
  });
});
