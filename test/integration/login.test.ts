import assert from 'node:assert/strict';
import type { Server } from 'node:http';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { createAuthStandIn, TEST_USERS } from '../../dev/stand-ins/auth-rbac.js';
import { close, listen } from '../../dev/stand-ins/http-util.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, onNewConnection, read, type Answer } from '../helpers/http.js';
import { TEST_SECRET } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { accessLine } from '../security/support.js';

const LOGIN = '/api/v1/auth/login';
const REFRESH = '/api/v1/auth/refresh';
const BODY_LIMIT = 512;

const provider = TEST_USERS.find((u) => u.email === 'provider@hospital.com')!;
const staff = TEST_USERS.find((u) => u.email === 'staff@hospital.com')!;
const resident = TEST_USERS.find((u) => u.email === 'resident@home.com')!;
const family = TEST_USERS.find((u) => u.email === 'family@home.com')!;

/**
 * The auth-rbac stand-in behind a recording front: the front keeps the exact bytes of every body
 * the gateway sent, then hands the request to the stand-in and its answer back to the gateway.
 */
interface AuthService {
  front: TestUpstream;
  /** The body bytes of each request in `front.received`, same order. */
  bodies: Buffer[];
  /** While set, each request waits for it before the stand-in is asked; a test holds answers back. */
  hold: Promise<void> | null;
  /** Called as each request's body has arrived. */
  onArrival: () => void;
  close(): Promise<void>;
}

async function startAuthService(): Promise<AuthService> {
  const standIn: Server = createAuthStandIn({ jwtSecret: TEST_SECRET, expiresIn: 600 });
  const port = await listen(standIn, 0);
  const bodies: Buffer[] = [];
  const service: AuthService = {
    front: undefined as unknown as TestUpstream,
    bodies,
    hold: null,
    onArrival: () => undefined,
    async close() {
      await service.front.close();
      await close(standIn);
    },
  };
  service.front = await startUpstream(async (req, res, entry) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    entry.bodyBytes = body.length;
    bodies.push(body);
    service.onArrival();
    if (service.hold !== null) await service.hold;
    const answer = await request(`http://127.0.0.1:${port}${req.url}`, {
      method: req.method as 'POST',
      headers: { 'content-type': req.headers['content-type'] ?? 'application/octet-stream' },
      body,
    });
    const text = await answer.body.text();
    res.writeHead(answer.statusCode, { 'content-type': String(answer.headers['content-type'] ?? 'application/json') });
    res.end(text);
  });
  return service;
}

function loginRoutes(upstreamUrl: string): Record<string, unknown> {
  return routesFor(upstreamUrl, [
    { name: 'auth-login', path: LOGIN, methods: ['POST'], auth: 'public', action: 'login', maxBodyBytes: BODY_LIMIT },
    { name: 'auth-refresh', path: REFRESH, methods: ['POST'], auth: 'public', action: 'refresh' },
  ]);
}

function post(gw: TestGateway, path: string, body: string | Buffer, contentType: string | null = 'application/json', extra: Record<string, string> = {}): Promise<Answer> {
  const headers: Record<string, string> = { ...extra };
  if (contentType !== null) headers['content-type'] = contentType;
  return read(request(`${gw.url}${path}`, { method: 'POST', headers, body }));
}

function login(gw: TestGateway, email: string, password: string, extra: Record<string, string> = {}): Promise<Answer> {
  return post(gw, LOGIN, JSON.stringify({ email, password }), 'application/json', extra);
}

function retryAfterOf(answer: Answer): number {
  const value = answer.headers['retry-after'];
  assert.equal(typeof value, 'string', `no Retry-After on a ${answer.statusCode} answer`);
  assert.match(value as string, /^\d+$/);
  const seconds = Number(value);
  assert.ok(seconds >= 1, `Retry-After ${seconds} invites an immediate retry`);
  return seconds;
}

describe('login: the body is validated before the auth service sees it', () => {
  let auth: AuthService;
  let gw: TestGateway;

  before(async () => {
    auth = await startAuthService();
    gw = await startTestGateway(loginRoutes(auth.front.url), { LOG_LEVEL: 'DEBUG' });
  });
  after(async () => {
    await gw.close();
    await auth.close();
  });

  const json = (value: unknown) => JSON.stringify(value);
  const bad: Array<[what: string, body: string, contentType: string | null, detail: RegExp]> = [
    ['missing email', json({ password: 'secret-1' }), 'application/json', /^email: is required/],
    ['an email that is not an address', json({ email: 'not-an-email', password: 'secret-1' }), 'application/json', /^email: must be an email address/],
    ['an email that is not a string', json({ email: 42, password: 'secret-1' }), 'application/json', /^email: /],
    ['an email over 254 characters', json({ email: `${'a'.repeat(250)}@hospital.com`, password: 'secret-1' }), 'application/json', /^email: /],
    ['missing password', json({ email: 'staff@hospital.com' }), 'application/json', /^password: is required/],
    ['an empty password', json({ email: 'staff@hospital.com', password: '' }), 'application/json', /^password: must not be empty/],
    ['a password that is a number', json({ email: 'staff@hospital.com', password: 12345678 }), 'application/json', /^password: must be a string/],
    ['a password that is an object', json({ email: 'staff@hospital.com', password: { $ne: '' } }), 'application/json', /^password: must be a string/],
    ['a password that is null', json({ email: 'staff@hospital.com', password: null }), 'application/json', /^password: must be a string/],
    ['an mfa_token of 5 digits', json({ email: 'staff@hospital.com', password: 'x', mfa_token: '12345' }), 'application/json', /^mfa_token: must be 6 digits/],
    ['an mfa_token of 7 digits', json({ email: 'staff@hospital.com', password: 'x', mfa_token: '1234567' }), 'application/json', /^mfa_token: must be 6 digits/],
    ['an mfa_token with a letter', json({ email: 'staff@hospital.com', password: 'x', mfa_token: '12345a' }), 'application/json', /^mfa_token: must be 6 digits/],
    ['an mfa_token with a trailing newline', json({ email: 'staff@hospital.com', password: 'x', mfa_token: '123456\n' }), 'application/json', /^mfa_token: must be 6 digits/],
    ['an mfa_token that is a number', json({ email: 'staff@hospital.com', password: 'x', mfa_token: 123456 }), 'application/json', /^mfa_token: must be a string of 6 digits/],
    ['an unknown extra field', json({ email: 'staff@hospital.com', password: 'x', role: 'admin' }), 'application/json', /^role: not an accepted field/],
    ['a prototype-polluting field', '{"email":"staff@hospital.com","password":"x","__proto__":{"admin":true}}', 'application/json', /^__proto__: not an accepted field/],
    ['a body that is not JSON', '{"email":"staff@hospital.com","password":', 'application/json', /JSON/],
    ['an empty body', '', 'application/json', /JSON/],
    ['a JSON array', json([{ email: 'staff@hospital.com', password: 'x' }]), 'application/json', /^body: must be a JSON object/],
    ['a JSON string', json('staff@hospital.com'), 'application/json', /^body: must be a JSON object/],
    ['JSON null', 'null', 'application/json', /^body: must be a JSON object/],
    ['Content-Type text/plain', json({ email: 'staff@hospital.com', password: 'x' }), 'text/plain', /Content-Type: application\/json/],
    ['a form-encoded body', 'email=staff%40hospital.com&password=x', 'application/x-www-form-urlencoded', /Content-Type: application\/json/],
    ['no Content-Type', json({ email: 'staff@hospital.com', password: 'x' }), null, /Content-Type: application\/json/],
    ['Content-Type application/jsonp', json({ email: 'staff@hospital.com', password: 'x' }), 'application/jsonp', /Content-Type: application\/json/],
  ];

  for (const [what, body, contentType, detail] of bad) {
    it(`refuses ${what} with 400 GW_INVALID_BODY naming the problem, without calling the auth service`, async () => {
      const before = auth.front.received.length;
      const res = await post(gw, LOGIN, body, contentType);
      const problem = expectProblem(res, 400, 'GW_INVALID_BODY');
      assert.match(problem.detail, detail);
      assert.equal(auth.front.received.length, before, 'the auth service must not be called');
    });
  }

  // A body that two JSON parsers may read differently (first or last copy of a field wins) is
  // re-serialised: the auth service gets exactly the object the gateway validated and counted.
  it('sends on the validated object, never the ambiguous bytes of a duplicated field', async () => {
    const before = auth.front.received.length;
    const res = await post(gw, LOGIN, '{"email":"staff@hospital.com","password":{"$ne":null},"password":"x"}');
    assert.equal(res.statusCode, 401, res.text);
    assert.equal(auth.front.received.length, before + 1);
    const sent = auth.bodies[auth.bodies.length - 1]!.toString('utf8');
    assert.equal(sent, '{"email":"staff@hospital.com","password":"x"}');
  });
  it('a duplicated email reaches the auth service as the one the lockout counted', async () => {
    const res = await post(gw, LOGIN, '{"email":"staff@hospital.com","email":"ghost-dup@hospital.com","password":"guess"}');
    assert.equal(res.statusCode, 401, res.text);
    const sent = JSON.parse(auth.bodies[auth.bodies.length - 1]!.toString('utf8')) as { email: string };
    assert.equal(sent.email, 'ghost-dup@hospital.com');
  });

  it('accepts Content-Type application/json with a charset parameter', async () => {
    const res = await post(gw, LOGIN, JSON.stringify({ email: staff.email, password: staff.password }), 'application/json; charset=utf-8');
    assert.equal(res.statusCode, 200, res.text);
  });

  it('refuses a declared body over maxBodyBytes with 413, without calling the auth service', async () => {
    const before = auth.front.received.length;
    const body = JSON.stringify({ email: staff.email, password: 'p'.repeat(BODY_LIMIT) });
    const res = await onNewConnection(gw.url, LOGIN, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    expectProblem(res, 413, 'GW_BODY_TOO_LARGE');
    assert.equal(auth.front.received.length, before);
  });

  it('refuses a chunked body that grows past maxBodyBytes with 413, without calling the auth service', async () => {
    const before = auth.front.received.length;
    const chunks = [Buffer.from(`{"email":"${staff.email}","password":"`), Buffer.alloc(BODY_LIMIT, 'p'), Buffer.from('"}')];
    const res = await onNewConnection(gw.url, LOGIN, { method: 'POST', headers: { 'content-type': 'application/json' }, body: Readable.from(chunks) });
    expectProblem(res, 413, 'GW_BODY_TOO_LARGE');
    assert.equal(auth.front.received.length, before);
  });

  it('accepts a body of exactly maxBodyBytes', async () => {
    const base = JSON.stringify({ email: staff.email, password: staff.password });
    const body = base + ' '.repeat(BODY_LIMIT - Buffer.byteLength(base));
    assert.equal(Buffer.byteLength(body), BODY_LIMIT);
    const res = await post(gw, LOGIN, body);
    assert.equal(res.statusCode, 200, res.text);
  });

  it('sends the validated object to the auth service, re-serialised with a matching length, and passes the spec\'s answer through', async () => {
    // Whitespace, key order and an escape: what arrives is the object, written once by the gateway.
    const body = Buffer.from(`{ "mfa_token" : "${provider.mfa}",\n  "password":"secure\\u005fpassword",  "email":"${provider.email}" }`);
    const before = auth.front.received.length;
    const res = await post(gw, LOGIN, body);
    assert.equal(res.statusCode, 200, res.text);
    assert.equal(auth.front.received.length, before + 1);
    const seen = auth.front.received.at(-1)!;
    assert.equal(seen.method, 'POST');
    assert.equal(seen.url, LOGIN);
    assert.equal(seen.headers['content-type'], 'application/json');
    const sent = auth.bodies.at(-1)!;
    assert.deepEqual(JSON.parse(sent.toString('utf8')), { mfa_token: provider.mfa, password: 'secure_password', email: provider.email });
    assert.equal(Number(seen.headers['content-length']), sent.length);

    assert.match(String(res.headers['content-type']), /^application\/json/);
    const answer = JSON.parse(res.text) as Record<string, unknown>;
    assert.deepEqual(Object.keys(answer).sort(), ['access_token', 'expires_in', 'refresh_token', 'user']);
    assert.match(answer.access_token as string, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    assert.match(answer.refresh_token as string, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    assert.equal(answer.expires_in, 600);
    assert.deepEqual(answer.user, { id: provider.id, email: provider.email, role: provider.role });
  });

  it('passes the auth service\'s 401 for wrong credentials through unchanged', async () => {
    const res = await login(gw, staff.email, 'not-the-password');
    assert.equal(res.statusCode, 401);
    assert.deepEqual(JSON.parse(res.text), { error: 'invalid_credentials', message: 'email, password or MFA token is wrong' });
  });

  describe('refresh', () => {
    const cases: Array<[what: string, body: string, detail: RegExp]> = [
      ['a missing refresh_token', '{}', /^refresh_token: is required/],
      ['a refresh_token that is not a JWT', JSON.stringify({ refresh_token: 'not-a-jwt' }), /^refresh_token: must be a JWT/],
      ['a refresh_token with a space', JSON.stringify({ refresh_token: 'aaa.bbb ccc.ddd' }), /^refresh_token: must be a JWT/],
      ['a refresh_token that is a number', JSON.stringify({ refresh_token: 12345 }), /^refresh_token: must be a string/],
      ['an empty refresh_token', JSON.stringify({ refresh_token: '' }), /^refresh_token: /],
      ['an extra field', JSON.stringify({ refresh_token: 'a.b.c', user_id: 'x' }), /^user_id: not an accepted field/],
    ];
    for (const [what, body, detail] of cases) {
      it(`refuses ${what} with 400 GW_INVALID_BODY naming refresh_token, without calling the auth service`, async () => {
        const before = auth.front.received.length;
        const problem = expectProblem(await post(gw, REFRESH, body), 400, 'GW_INVALID_BODY');
        assert.match(problem.detail, detail);
        assert.equal(auth.front.received.length, before);
      });
    }

    it('passes a well-formed refresh token on to the auth service', async () => {
      const signedIn = await login(gw, resident.email, resident.password);
      assert.equal(signedIn.statusCode, 200, signedIn.text);
      const { refresh_token } = JSON.parse(signedIn.text) as { refresh_token: string };
      const body = JSON.stringify({ refresh_token });
      const res = await post(gw, REFRESH, body);
      assert.equal(res.statusCode, 200, res.text);
      assert.equal(auth.front.received.at(-1)!.url, REFRESH);
      assert.equal(auth.bodies.at(-1)!.toString(), body);
      assert.equal((JSON.parse(res.text) as { user: { id: string } }).user.id, resident.id);
    });
  });
});

describe('login: failed attempts are limited per account', () => {
  let auth: AuthService;
  let gw: TestGateway;

  before(async () => {
    auth = await startAuthService();
    gw = await startTestGateway(loginRoutes(auth.front.url), { LOGIN_MAX_FAILURES_PER_ACCOUNT: '3', LOGIN_MAX_FAILURES_PER_IP: '1000' });
  });
  after(async () => {
    await gw.close();
    await auth.close();
  });

  it('after 3 failures the 4th attempt on the account is 429 with Retry-After, and the auth service is not called', async () => {
    for (let i = 1; i <= 3; i++) {
      const res = await login(gw, staff.email, `wrong-${i}`);
      assert.equal(res.statusCode, 401, `attempt ${i}: ${res.text}`);
    }
    const before = auth.front.received.length;
    // Even the right password: the account is locked out for the window.
    const res = await login(gw, staff.email, staff.password);
    expectProblem(res, 429, 'GW_RATE_LIMITED');
    retryAfterOf(res);
    assert.equal(auth.front.received.length, before, 'the auth service must not be asked once the account is locked out');
    const again = await login(gw, staff.email, 'wrong-again');
    expectProblem(again, 429, 'GW_RATE_LIMITED');
    assert.equal(auth.front.received.length, before);
  });

  it('the account is the same whatever the case of the address', async () => {
    const before = auth.front.received.length;
    const res = await login(gw, staff.email.toUpperCase(), staff.password);
    expectProblem(res, 429, 'GW_RATE_LIMITED');
    assert.equal(auth.front.received.length, before);
  });

  it('another account from the same address still gets through', async () => {
    const before = auth.front.received.length;
    const res = await login(gw, resident.email, resident.password);
    assert.equal(res.statusCode, 200, res.text);
    assert.equal(auth.front.received.length, before + 1);
  });

  it('successful logins do not count as failures', async () => {
    for (let i = 0; i < 5; i++) {
      const res = await login(gw, family.email, family.password);
      assert.equal(res.statusCode, 200, `success ${i + 1}: ${res.text}`);
    }
    for (let i = 1; i <= 3; i++) {
      const res = await login(gw, family.email, `wrong-${i}`);
      assert.equal(res.statusCode, 401, `failure ${i} after successes: ${res.text}`);
    }
    expectProblem(await login(gw, family.email, family.password), 429, 'GW_RATE_LIMITED');
  });

  it('concurrent guesses cannot get past the limit: at most 3 reach the auth service', { timeout: 10_000 }, async () => {
    // The auth service holds its answers until every attempt has either reached it or been
    // refused by the gateway, so no attempt can be judged on the outcome of another.
    const email = 'ghost-concurrent@hospital.com';
    const attempts = 10;
    const before = auth.front.received.length;
    let release!: () => void;
    auth.hold = new Promise<void>((resolve) => (release = resolve));
    // Answers that arrive while the auth service holds its own can only be the gateway's.
    let answeredByGateway = 0;
    const settle = () => {
      if (auth.front.received.length - before + answeredByGateway >= attempts) release();
    };
    auth.onArrival = settle;
    try {
      const answers = await Promise.all(
        Array.from({ length: attempts }, (_, i) =>
          login(gw, email, `guess-${i}`).then((res) => {
            answeredByGateway++;
            settle();
            return res;
          }),
        ),
      );
      const reached = auth.front.received.length - before;
      assert.ok(reached <= 3, `${reached} concurrent guesses reached the auth service with LOGIN_MAX_FAILURES_PER_ACCOUNT=3 (statuses ${answers.map((a) => a.statusCode).join(',')})`);
      for (const res of answers) if (res.statusCode !== 401) expectProblem(res, 429, 'GW_RATE_LIMITED');
    } finally {
      release();
      auth.hold = null;
      auth.onArrival = () => undefined;
    }
  });

  it('refused bodies do not count as failures of the account', async () => {
    const email = 'ghost-invalid@hospital.com';
    for (let i = 0; i < 5; i++) {
      expectProblem(await post(gw, LOGIN, JSON.stringify({ email, password: 'x', extra: true })), 400, 'GW_INVALID_BODY');
    }
    const res = await login(gw, email, 'x');
    assert.equal(res.statusCode, 401, res.text);
  });
});

describe('login: failed attempts are limited per client address', () => {
  let auth: AuthService;
  let gw: TestGateway;

  before(async () => {
    auth = await startAuthService();
    // Loopback is a trusted proxy here, so X-Forwarded-For names the client: two clients from one test.
    gw = await startTestGateway(loginRoutes(auth.front.url), {
      LOGIN_MAX_FAILURES_PER_ACCOUNT: '1000',
      LOGIN_MAX_FAILURES_PER_IP: '3',
      TRUSTED_PROXIES: '127.0.0.1',
    });
  });
  after(async () => {
    await gw.close();
    await auth.close();
  });

  it('failures on different accounts from one address lead to 429 for that address, without calling the auth service', async () => {
    const client = { 'x-forwarded-for': '203.0.113.7' };
    for (let i = 1; i <= 3; i++) {
      const res = await login(gw, `ghost-${i}@hospital.com`, 'guess', client);
      assert.equal(res.statusCode, 401, `attempt ${i}: ${res.text}`);
    }
    const before = auth.front.received.length;
    const res = await login(gw, provider.email, provider.password, client);
    expectProblem(res, 429, 'GW_RATE_LIMITED');
    retryAfterOf(res);
    assert.equal(auth.front.received.length, before, 'the auth service must not be asked for a locked-out address');
  });

  it('another address still gets through', async () => {
    const res = await login(gw, provider.email, provider.password, { 'x-forwarded-for': '203.0.113.8' });
    assert.equal(res.statusCode, 200, res.text);
  });
});

describe('login: the password never reaches the logs', () => {
  let auth: AuthService;
  let gw: TestGateway;

  before(async () => {
    auth = await startAuthService();
    // DEBUG so that no line is hidden from the check by its level.
    gw = await startTestGateway(loginRoutes(auth.front.url), { LOG_LEVEL: 'DEBUG', LOGIN_MAX_FAILURES_PER_ACCOUNT: '2' });
  });
  after(async () => {
    await gw.close();
    await auth.close();
  });

  it('after logins that pass, fail, are refused and are locked out, no log line carries a password', async () => {
    const canary = 'PASSWORD-CANARY-4f1d9a';
    const ids: string[] = [];
    const send = async (path: string, body: string, contentType: string | null, expected: number) => {
      const res = await post(gw, path, body, contentType);
      assert.equal(res.statusCode, expected, `${body.slice(0, 80)}: ${res.text}`);
      ids.push(res.headers['x-request-id'] as string);
    };
    await send(LOGIN, JSON.stringify({ email: provider.email, password: provider.password, mfa_token: provider.mfa }), 'application/json', 200);
    await send(LOGIN, JSON.stringify({ email: staff.email, password: canary }), 'application/json', 401);
    await send(LOGIN, JSON.stringify({ email: staff.email, password: `${canary}-2` }), 'application/json', 401);
    await send(LOGIN, JSON.stringify({ email: staff.email, password: `${canary}-3` }), 'application/json', 429);
    await send(LOGIN, JSON.stringify({ email: 'not-an-email', password: canary }), 'application/json', 400);
    await send(LOGIN, JSON.stringify({ email: resident.email, password: canary, role: 'admin' }), 'application/json', 400);
    await send(LOGIN, JSON.stringify({ email: resident.email, password: canary, mfa_token: canary }), 'application/json', 400);
    await send(LOGIN, `{"email":"${resident.email}","password":"${canary}"`, 'application/json', 400);
    await send(LOGIN, JSON.stringify({ email: resident.email, password: canary }), 'text/plain', 400);
    await send(LOGIN, JSON.stringify({ email: resident.email, password: `${canary}${'x'.repeat(BODY_LIMIT)}` }), 'application/json', 413);
    await send(REFRESH, JSON.stringify({ refresh_token: canary }), 'application/json', 400);

    // Every request was logged, so the check below is not passing on an empty log.
    for (const id of ids) await accessLine(gw, id);
    assert.ok(gw.logs.some((l) => l.message === 'login refused: too many failed attempts'));

    for (const line of gw.logs) {
      const text = JSON.stringify(line);
      for (const secret of [canary, provider.password]) {
        assert.ok(!text.includes(secret), `a password appears in the log line ${text}`);
      }
    }
  });
});
