import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { decodeJwt } from 'jose';
import { createAuthStandIn, type TestUser } from '../../dev/stand-ins/auth-rbac.js';
import { close, listen } from '../../dev/stand-ins/http-util.js';
import { send } from './http.js';
import { HEALTH_CHECK_AGENT } from './upstream.js';
import { TEST_SECRET } from './tokens.js';

/** The auth-rbac stand-in (dev/stand-ins/auth-rbac.ts) on loopback, with every request it got recorded. */
export interface AuthService {
  url: string;
  port: number;
  /** Live sessions, id -> user id: a test may open or end one. */
  sessions: Map<string, string>;
  /** Every request that reached the service, in order. */
  calls: Array<{ method: string; path: string }>;
  /** How many requests reached `method path`. */
  callsTo(method: string, path: string): number;
  /** How many session lookups (GET /api/v1/auth/sessions/{id}) reached the service, for one session or all. */
  sessionChecks(sessionId?: string): number;
  /** Holds every request back (after recording it) until the returned function is called. */
  hold(): () => void;
  /** Stops answering: the port refuses connections until `start()`. */
  stop(): Promise<void>;
  /** Listens again on the same port, with the same sessions. */
  start(): Promise<void>;
}

export const SESSIONS_PATH = '/api/v1/auth/sessions/';

export async function startAuthService(expiresIn = 600): Promise<AuthService> {
  // The stand-in answers behind a front that records each request and can hold it back.
  const standIn = createAuthStandIn({ jwtSecret: TEST_SECRET, expiresIn });
  const calls: AuthService['calls'] = [];
  let held: Promise<void> | null = null;
  const front = createServer((req, res) => {
    // The gateway's active health checks of auth-rbac are not calls a test counts or holds.
    if (req.headers['user-agent'] === HEALTH_CHECK_AGENT) {
      standIn.emit('request', req, res);
      return;
    }
    calls.push({ method: req.method!, path: new URL(req.url!, 'http://auth-rbac').pathname });
    if (held === null) standIn.emit('request', req, res);
    else void held.then(() => standIn.emit('request', req, res));
  });
  const port = await listen(front, 0);
  let listening = true;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    sessions: standIn.sessions,
    calls,
    callsTo: (method, path) => calls.filter((c) => c.method === method && c.path === path).length,
    sessionChecks: (sessionId) =>
      calls.filter((c) => c.method === 'GET' && c.path.startsWith(SESSIONS_PATH) && (sessionId === undefined || c.path === `${SESSIONS_PATH}${encodeURIComponent(sessionId)}`)).length,
    hold() {
      let release!: () => void;
      held = new Promise<void>((resolve) => (release = resolve));
      return () => {
        held = null;
        release();
      };
    },
    async stop() {
      if (!listening) return;
      listening = false;
      await close(front);
    },
    async start() {
      if (listening) return;
      await listen(front, port);
      listening = true;
    },
  };
}

/** What a sign-in through the gateway hands back, with the claims the gateway cares about. */
export interface SignedIn {
  accessToken: string;
  refreshToken: string;
  userId: string;
  sessionId: string;
  jti: string;
}

function signedIn(body: { access_token: string; refresh_token: string }): SignedIn {
  const claims = decodeJwt(body.access_token);
  assert.equal(typeof claims.sid, 'string', 'the stand-in opens a session (sid) at login');
  return { accessToken: body.access_token, refreshToken: body.refresh_token, userId: claims.sub!, sessionId: claims.sid as string, jti: claims.jti! };
}

/** Signs in through the gateway's login route (POST /api/v1/auth/login by default). */
export async function login(gatewayUrl: string, user: TestUser, path = '/api/v1/auth/login'): Promise<SignedIn> {
  const res = await send(`${gatewayUrl}${path}`, { json: { email: user.email, password: user.password } });
  assert.equal(res.statusCode, 200, `login of ${user.email}: ${res.text}`);
  return signedIn(JSON.parse(res.text) as { access_token: string; refresh_token: string });
}

/** Exchanges a refresh token through the gateway's refresh route: a new access token of the same session. */
export async function refresh(gatewayUrl: string, refreshToken: string, path = '/api/v1/auth/refresh'): Promise<SignedIn> {
  const res = await send(`${gatewayUrl}${path}`, { json: { refresh_token: refreshToken } });
  assert.equal(res.statusCode, 200, `refresh: ${res.text}`);
  return signedIn(JSON.parse(res.text) as { access_token: string; refresh_token: string });
}
