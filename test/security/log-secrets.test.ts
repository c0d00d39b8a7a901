import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { freePort } from '../helpers/ports.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { rawExchange } from '../helpers/raw-http.js';
import { accessLine, waitForLog } from './support.js';

describe('credentials never reach the logs', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  const secrets: string[] = [];
  const ids: string[] = [];

  before(async () => {
    upstream = await startUpstream((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json', 'set-cookie': 'upstream_session=SETCOOKIE-CANARY-5e1f; HttpOnly' });
        res.end('{}');
      });
    });
    const nobody = await freePort();
    gw = await startTestGateway(
      {
        services: { backend: { instances: [upstream.url] }, gone: { instances: [`http://127.0.0.1:${nobody}`] } },
        routes: [
          { name: 'open', prefix: '/public', auth: 'public', service: 'backend' },
          { name: 'records', prefix: '/records', auth: 'required', roles: ['health_provider'], service: 'backend' },
          { name: 'down', prefix: '/down', auth: 'required', service: 'gone' },
        ],
      },
      // DEBUG so that no line is hidden from the check by its level.
      { LOG_LEVEL: 'DEBUG' },
    );
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  async function send(path: string, headers: Record<string, string>, expected: number): Promise<void> {
    const res = await request(`${gw.url}${path}`, { method: 'GET', headers });
    assert.equal(res.statusCode, expected, `${path}: ${await res.body.text()}`);
    await res.body.dump().catch(() => {});
    ids.push(res.headers['x-request-id'] as string);
  }

  it('after requests that pass and fail authentication, no log line carries a credential', async () => {
    const good = await signToken({ sub: 'u-logs', role: 'health_provider' });
    const wrongRole = await signToken({ sub: 'u-logs-2', role: 'resident' });
    const forged = await signToken({ sub: 'u-forged', role: 'admin', secret: 'not-the-gateway-secret-0123456789abcdef' });
    const expired = await signToken({ sub: 'u-old', expiresInSeconds: -3600 });
    const basic = Buffer.from('clinician:BASIC-PASSWORD-CANARY').toString('base64');
    const cookie = 'session=COOKIE-CANARY-7d3a; csrf=CSRF-CANARY-91bb';
    secrets.push(good, wrongRole, forged, expired, basic, 'BASIC-PASSWORD-CANARY', 'COOKIE-CANARY-7d3a', 'CSRF-CANARY-91bb', 'SETCOOKIE-CANARY-5e1f', 'NOT-A-JWT-CANARY');
    // Signatures alone identify a token too.
    for (const t of [good, wrongRole, forged, expired]) secrets.push(t.split('.')[2]!);

    await send('/records/1', { authorization: `Bearer ${good}`, cookie }, 200);
    await send('/public/1', { authorization: `Bearer ${good}`, cookie }, 200);
    await send('/records/2', { authorization: `Bearer ${wrongRole}`, cookie }, 403);
    await send('/records/3', { authorization: `Bearer ${forged}`, cookie }, 401);
    await send('/records/4', { authorization: `Bearer ${expired}`, cookie }, 401);
    await send('/records/5', { authorization: 'Bearer NOT-A-JWT-CANARY', cookie }, 401);
    await send('/records/6', { authorization: `Basic ${basic}`, cookie }, 401);
    await send('/records/7', { authorization: `bearer ${good}` }, 200); // the scheme name is case-insensitive
    await send('/nowhere', { authorization: `Bearer ${good}`, cookie }, 404);
    await send('/down/1', { authorization: `Bearer ${good}`, cookie }, 502);

    // A request Node's parser refuses: logged by the gateway's client-error path.
    const { responses } = await rawExchange(gw.port, `GET /records/8 HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer ${good}\r\nCookie: ${cookie}\r\nX-Bad : header\r\n\r\n`);
    assert.equal(responses[0]!.status, 400);
    await waitForLog(gw, (l) => l.message === 'rejected malformed request');

    // Every request was logged, so the check below is not passing on an empty log.
    for (const id of ids) await accessLine(gw, id);
    assert.ok(gw.logs.some((l) => l.message === 'upstream request failed'));
    assert.equal((await accessLine(gw, ids[0]!)).user_id, 'u-logs');

    for (const line of gw.logs) {
      const text = JSON.stringify(line);
      for (const secret of secrets) {
        assert.ok(!text.includes(secret), `a credential (${secret.slice(0, 12)}...) appears in the log line ${text}`);
      }
      assert.ok(!/bearer|basic /i.test(text), `an Authorization scheme appears in the log line ${text}`);
    }
  });
});
