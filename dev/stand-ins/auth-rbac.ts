import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { decodeJwt, jwtVerify, SignJWT } from 'jose';
import { readJson, sendJson } from './http-util.js';

/**
 * Stand-in for the auth-rbac service (:8080): the spec's login contract, tokens signed with the
 * shared JWT_SECRET. Test users only; the real service owns users, MFA and refresh tokens.
 */
export interface TestUser {
  id: string;
  email: string;
  password: string;
  role: string;
  phiAccessLevel: string;
  mfa?: string;
}

export const TEST_USERS: readonly TestUser[] = [
  { id: '7c9e6679-7425-40de-944b-e07fc1f90ae7', email: 'provider@hospital.com', password: 'secure_password', role: 'health_provider', phiAccessLevel: 'full', mfa: '123456' },
  { id: '3f2504e0-4f89-41d3-9a0c-0305e82c3301', email: 'staff@hospital.com', password: 'staff_password', role: 'care_staff', phiAccessLevel: 'limited' },
  { id: '9b2f3c1a-2d4e-4f6a-8b7c-1d2e3f4a5b6c', email: 'resident@home.com', password: 'resident_password', role: 'resident', phiAccessLevel: 'self' },
  { id: '5d6e7f80-91a2-4b3c-8d4e-5f6a7b8c9d0e', email: 'family@home.com', password: 'family_password', role: 'family_member', phiAccessLevel: 'delegated' },
  { id: '1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d', email: 'admin@platform.com', password: 'admin_password', role: 'admin', phiAccessLevel: 'break_glass' },
  { id: '0f1e2d3c-4b5a-4968-8776-655443322110', email: 'test@example.com', password: 'test123', role: 'resident', phiAccessLevel: 'self' },
];

export interface AuthStandInOptions {
  jwtSecret: string;
  expiresIn: number;
}

export async function issueAccessToken(user: TestUser, options: AuthStandInOptions, sessionId?: string): Promise<string> {
  return new SignJWT({ role: user.role, phi_access_level: user.phiAccessLevel, typ: 'access', ...(sessionId !== undefined ? { sid: sessionId } : undefined) })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(user.id)
    .setJti(randomUUID())
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + options.expiresIn)
    .sign(new TextEncoder().encode(options.jwtSecret));
}

async function issueRefreshToken(user: TestUser, sessionId: string, options: AuthStandInOptions): Promise<string> {
  return new SignJWT({ typ: 'refresh', sid: sessionId })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(user.id)
    .setJti(randomUUID())
    .setIssuedAt()
    .setExpirationTime('24h')
    .sign(new TextEncoder().encode(options.jwtSecret));
}

export interface AuthStandIn extends Server {
  /** Live sessions: id -> user id. A test may end one to see the gateway refuse its tokens. */
  readonly sessions: Map<string, string>;
}

/**
 * Login, refresh, logout and session lookup, as the gateway expects them of auth-rbac:
 * - POST /api/v1/auth/login: the spec's body and response shape; opens a session (`sid` claim);
 * - POST /api/v1/auth/refresh `{ refresh_token }`: a new access token for a live session;
 * - POST /api/v1/auth/logout (Bearer access token, optional `{ refresh_token }`): ends the session;
 * - GET /api/v1/auth/sessions/{id}: `{ active, user_id }`, or 404 once it has ended.
 */
export function createAuthStandIn(options: AuthStandInOptions): AuthStandIn {
  const sessions = new Map<string, string>();
  const revokedRefresh = new Set<string>();
  const key = new TextEncoder().encode(options.jwtSecret);
  const tokensFor = async (user: TestUser, sessionId: string) => ({
    access_token: await issueAccessToken(user, options, sessionId),
    refresh_token: await issueRefreshToken(user, sessionId, options),
    expires_in: options.expiresIn,
    user: { id: user.id, email: user.email, role: user.role },
  });
  const server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://auth-rbac');
      if (req.method === 'GET' && url.pathname === '/health') return sendJson(res, 200, { status: 'healthy', service: 'auth-rbac' });
      if (req.method === 'GET' && url.pathname.startsWith('/api/v1/auth/sessions/')) {
        const userId = sessions.get(decodeURIComponent(url.pathname.slice('/api/v1/auth/sessions/'.length)));
        return userId === undefined ? sendJson(res, 404, { error: 'session_not_found' }) : sendJson(res, 200, { active: true, user_id: userId });
      }
      if (req.method === 'POST' && url.pathname === '/api/v1/auth/login') {
        const body = (await readJson(req)) as { email?: unknown; password?: unknown; mfa_token?: unknown } | null;
        const user = TEST_USERS.find((u) => u.email === body?.email && u.password === body?.password);
        if (!user || (body?.mfa_token !== undefined && user.mfa !== undefined && body.mfa_token !== user.mfa)) {
          return sendJson(res, 401, { error: 'invalid_credentials', message: 'email, password or MFA token is wrong' });
        }
        const sessionId = randomUUID();
        sessions.set(sessionId, user.id);
        return sendJson(res, 200, await tokensFor(user, sessionId));
      }
      if (req.method === 'POST' && url.pathname === '/api/v1/auth/refresh') {
        const body = (await readJson(req)) as { refresh_token?: unknown } | null;
        try {
          const { payload } = await jwtVerify(String(body?.refresh_token), key, { algorithms: ['HS256'] });
          const user = TEST_USERS.find((u) => u.id === payload.sub);
          const sessionId = typeof payload.sid === 'string' ? payload.sid : '';
          if (payload.typ !== 'refresh' || !user || revokedRefresh.has(String(payload.jti)) || sessions.get(sessionId) !== user.id) throw new Error('refused');
          revokedRefresh.add(String(payload.jti));
          return sendJson(res, 200, await tokensFor(user, sessionId));
        } catch {
          return sendJson(res, 401, { error: 'invalid_refresh_token' });
        }
      }
      if (req.method === 'POST' && url.pathname === '/api/v1/auth/logout') {
        const body = (await readJson(req)) as { refresh_token?: unknown } | null;
        const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
        const sid = bearer ? decodeJwt(bearer).sid : undefined;
        if (typeof sid === 'string') sessions.delete(sid);
        if (typeof body?.refresh_token === 'string') revokedRefresh.add(String(decodeJwt(body.refresh_token).jti));
        return sendJson(res, 200, { logged_out: true });
      }
      return sendJson(res, 404, { error: 'not_found' });
    })().catch(() => sendJson(res, 500, { error: 'internal' }));
  });
  return Object.assign(server, { sessions });
}
