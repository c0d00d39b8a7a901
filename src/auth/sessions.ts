import type { Pool } from 'undici';
import type { Identity } from './identity.js';

/** The spec's session cache TTL: `session:{session_id}`, 2 hours. */
export const SESSION_TTL_SECONDS = 7200;

export type SessionVerdict = 'valid' | 'invalid' | 'unavailable';

/**
 * Validates a token's session with the auth service, once: the result is cached (access-check.ts)
 * as `session:{id}` -> user id, nothing else, so no PHI sits in the cache. The contract assumed of
 * auth-rbac: `GET /api/v1/auth/sessions/{id}` answers 200 `{ "active": true, "user_id": "..." }`
 * for a live session, 404 (or `active: false`) for an ended one. Any other answer, a timeout or a
 * refused connection is a dependency failure, never a verdict on the caller. Concurrent requests
 * for one session share one call.
 */
export class SessionValidator {
  private readonly pending = new Map<string, Promise<SessionVerdict>>();

  constructor(
    private readonly pool: Pool,
    private readonly timeoutMs: number,
  ) {}

  validate(identity: Identity, requestId: string): Promise<SessionVerdict> {
    const sid = identity.sessionId!;
    let p = this.pending.get(sid);
    if (p === undefined) {
      p = this.ask(sid, identity.userId, requestId).finally(() => this.pending.delete(sid));
      this.pending.set(sid, p);
    }
    return p;
  }

  private async ask(sid: string, userId: string, requestId: string): Promise<SessionVerdict> {
    try {
      const res = await this.pool.request({
        path: `/api/v1/auth/sessions/${encodeURIComponent(sid)}`,
        method: 'GET',
        headers: { accept: 'application/json', 'x-request-id': requestId },
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      if (res.statusCode === 404 || res.statusCode === 410) {
        await res.body.dump();
        return 'invalid';
      }
      if (res.statusCode !== 200) {
        await res.body.dump();
        return 'unavailable';
      }
      const body = (await res.body.json()) as { active?: unknown; user_id?: unknown };
      return body.active === true && body.user_id === userId ? 'valid' : 'invalid';
    } catch {
      return 'unavailable';
    }
  }
}
