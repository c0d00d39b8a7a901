import type { IncomingMessage } from 'node:http';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { z } from 'zod';
import type { AuditTrail, SocketClose } from '../audit/audit-trail.js';
import type { Identity } from '../auth/identity.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { ms } from '../schema-fields.js';
import type { Revocation } from '../stores/access-store.js';
import type { AccessControl } from '../stores/failover-access-store.js';
import type { UpstreamService } from '../upstream/service.js';
import { originAllowed } from './cors-policy.js';
import { awaitRecord, recordedNow, UNAUDITABLE } from './audit-gate.js';
import { ANSWERED, stage, type Exchange, type Refusal, type RouteStage, type Verdict } from './exchange.js';

/** The routes-file slice: the route carries WebSockets (`websocket: true`, or its limits). */
export const websocketSchema = {
  websocket: z
    .union([
      z.boolean(),
      z.strictObject({
        /** A socket with no message either way for this long is closed (4408). */
        idleTimeoutMs: ms('websocket.idleTimeoutMs').default(300_000),
        /** A larger message closes the socket (1009), from either side. */
        maxMessageBytes: z.number().int().min(1).max(64 * 1024 * 1024).default(1024 * 1024),
        /** Open sockets one user may hold on this route, per gateway process; one more is refused with 429. */
        maxPerUser: z.number().int().min(1).max(10_000).default(10),
      }),
    ])
    .optional(),
};

type WebSocketConfig = z.output<(typeof websocketSchema)['websocket']>;
const DEFAULTS = { idleTimeoutMs: 300_000, maxMessageBytes: 1024 * 1024, maxPerUser: 10 } as const;

/** The limits of a route's sockets, or null for a route without WebSockets. */
export function websocketLimits(config: WebSocketConfig): { idleTimeoutMs: number; maxMessageBytes: number; maxPerUser: number } | null {
  if (config === undefined || config === false) return null;
  return config === true ? DEFAULTS : config;
}

/**
 * Close codes the gateway sends (4000-4999 are for applications, RFC 6455 7.4.2): each says
 * why, so that a client knows whether to sign in again or just reconnect.
 */
export const CLOSE = {
  idle: [4408, 'idle timeout'],
  expired: [4401, 'token expired'],
  revoked: [4403, 'token revoked'],
  shutdown: [1001, 'gateway shutting down'],
  upstreamGone: [1014, 'upstream closed abnormally'],
} as const;

/** A slow reader's queue past this makes the other side's socket stop reading until it drains. */
const HIGH_WATER_BYTES = 1024 * 1024;
const LOW_WATER_BYTES = 256 * 1024;

const UPGRADE_REQUIRED: Refusal = { code: 'GW_UPGRADE_REQUIRED', detail: 'this route takes WebSocket connections only (Upgrade: websocket)', headers: { upgrade: 'websocket' } };

/**
 * A browser cannot set Authorization on a WebSocket; it can offer subprotocols. A client offers
 * `bearer` followed by its token (`new WebSocket(url, ['bearer', token])`, with its own protocols
 * before them if it has any). Before anything else reads the request, the token becomes the
 * Authorization header and both entries leave the protocol list, so the upstream never sees the
 * token there and no log or header copy can carry it. Returns whether the client offered it
 * (the handshake then answers `bearer` when the upstream selects no protocol of its own).
 */
export function bearerFromProtocols(req: IncomingMessage): boolean {
  const offered = req.headers['sec-websocket-protocol'];
  if (offered === undefined) return false;
  const list = offered.split(',').map((p) => p.trim());
  const at = list.indexOf('bearer');
  if (at === -1) return false;
  const token = list[at + 1];
  list.splice(at, 2);
  if (list.length === 0) delete req.headers['sec-websocket-protocol'];
  else req.headers['sec-websocket-protocol'] = list.join(', ');
  if (token !== undefined && req.headers.authorization === undefined) req.headers.authorization = `Bearer ${token}`;
  return true;
}

interface OpenSocket {
  readonly identity: Identity | null;
  close(code: number, reason: string, why: string): void;
}

/**
 * Every open WebSocket of this process: counted per user (a route's maxPerUser), closed when its
 * token or session is revoked (on any replica: the revocation reaches this one's mirror) and at
 * shutdown.
 */
export class SocketRegistry {
  private readonly open = new Set<OpenSocket>();
  private readonly perUser = new Map<string, number>();

  constructor(store: AccessControl | null) {
    store?.onRevocation((r) => this.revoked(r));
  }

  get size(): number {
    return this.open.size;
  }

  countOf(userId: string): number {
    return this.perUser.get(userId) ?? 0;
  }

  add(s: OpenSocket): void {
    this.open.add(s);
    const user = s.identity?.userId;
    if (user !== undefined) this.perUser.set(user, this.countOf(user) + 1);
  }

  remove(s: OpenSocket): void {
    if (!this.open.delete(s)) return;
    const user = s.identity?.userId;
    if (user === undefined) return;
    const left = this.countOf(user) - 1;
    if (left <= 0) this.perUser.delete(user);
    else this.perUser.set(user, left);
  }

  /** At shutdown: a close frame to every client (and upstream) first. */
  closeAll(): void {
    for (const s of [...this.open]) s.close(CLOSE.shutdown[0], CLOSE.shutdown[1], 'shutdown');
  }

  private revoked(r: Revocation): void {
    for (const s of [...this.open]) {
      const who = s.identity;
      if (who === null) continue;
      const hit =
        r.kind === 'token'
          ? who.tokenId === r.tokenId
          : r.kind === 'user'
            ? who.userId === r.userId && (who.issuedAt === null || who.issuedAt <= r.before)
            : who.sessionId === r.sessionId;
      if (hit) s.close(CLOSE.revoked[0], CLOSE.revoked[1], 'revoked');
    }
  }
}

export interface WebSocketDeps {
  readonly services: ReadonlyMap<string, UpstreamService>;
  readonly sockets: SocketRegistry;
  readonly audit: AuditTrail | null;
  readonly metrics: Metrics | null;
  readonly logger: Logger;
  readonly upstreamCa: Buffer | undefined;
  readonly clockSkewSeconds: number;
}

type WebSocketRoute = {
  readonly websocket?: WebSocketConfig;
  readonly service?: string | undefined;
  readonly timeoutMs: number;
};

/**
 * Stage, the last of `websocket` routes, in place of forward: after the same chain as any request
 * (route, token, roles, subject, rate limit, identity headers), the upstream's WebSocket is opened
 * first, and only once it accepted does the client get its 101, so a refused or unreachable
 * upstream is the gateway's JSON error, never a socket that opens and dies. Messages then pass
 * both ways as they come, each side's reading paused while the other side's queue is over 1 MB
 * (a slow reader never makes the gateway buffer without bound). Closed with a clear code when
 * idle, when the token expires, when it or its session is revoked, and at shutdown.
 */
export const websocket: RouteStage<WebSocketRoute, WebSocketDeps> = {
  name: 'websocket',
  create(route, deps) {
    const limits = websocketLimits(route.websocket);
    if (limits === null || route.service === undefined) return null;
    const service = deps.services.get(route.service)!;
    // The protocol the upstream selected answers the client; `bearer` when it offered its token so and the upstream selected none.
    const selected = new WeakMap<IncomingMessage, { protocol: string; bearer: boolean }>();
    const clients = new WebSocketServer({
      noServer: true,
      maxPayload: limits.maxMessageBytes,
      perMessageDeflate: false,
      clientTracking: false,
      handleProtocols: (offered, req) => {
        const protocol = selected.get(req)?.protocol ?? '';
        return protocol !== '' && offered.has(protocol) ? protocol : false;
      },
    });
    clients.on('headers', (lines, req) => {
      const choice = selected.get(req);
      if (choice?.bearer && !lines.some((l) => l.toLowerCase().startsWith('sec-websocket-protocol:'))) lines.push('Sec-WebSocket-Protocol: bearer');
    });
    const tooMany: Refusal = { code: 'GW_RATE_LIMITED', detail: `more than ${limits.maxPerUser} open WebSockets on this route`, headers: { 'retry-after': '1' }, counts: 'rate-limited' };
    return stage(
      'websocket',
      (ex, req, res): Verdict | Promise<Verdict> => {
        const up = ex.upgrade;
        if (up === null || req.headers.upgrade?.toLowerCase() !== 'websocket') return UPGRADE_REQUIRED;
        // Browsers apply no CORS to a WebSocket but always say where the page came from: a page of
        // an origin the route does not allow could otherwise open a socket with a user's token.
        const origin = req.headers.origin;
        if (origin !== undefined && !originAllowed(ex.cors, origin)) return { code: 'GW_CORS_REJECTED', detail: `WebSockets from ${origin} are not allowed on this route` };
        const who = ex.identity;
        if (who !== null && deps.sockets.countOf(who.userId) >= limits.maxPerUser) return tooMany;
        const inst = service.pick(undefined, performance.now(), null);
        if (inst === null) return { code: 'GW_NO_HEALTHY_UPSTREAM', detail: `no instance of the ${service.name} service is healthy`, headers: { 'retry-after': '1' } };
        const url = `${inst.origin.replace(/^http/, 'ws')}${ex.upstreamTarget}`;
        const accept = (upstream: WebSocket): Verdict => {
          if (up.socket.destroyed) {
            // The client left while the upstream was being opened.
            upstream.terminate();
            return ANSWERED;
          }
          selected.set(req, { protocol: upstream.protocol, bearer: up.bearer });
          // The socket is the WebSocket's from here: the response object lets go of it, and the
          // exit phase runs when the WebSocket closes (relay), not when the socket does.
          res.detachSocket(up.socket as never);
          ex.webSocketOpen = true;
          clients.handleUpgrade(req, up.socket, up.head, (client) => relay(ex, client, upstream, limits.idleTimeoutMs, deps));
          return ANSWERED;
        };
        return openUpstream(url, req, ex, limits.maxMessageBytes, route.timeoutMs, deps.upstreamCa).then((upstream) => {
          if (!(upstream instanceof WebSocket)) return upstream;
          if (recordedNow(ex)) return accept(upstream);
          // On a write-ahead route the 101 waits for the access record to be durable.
          return new Promise<Verdict>((resolve) =>
            awaitRecord(ex, (ok) => {
              if (ok) return resolve(accept(upstream));
              upstream.terminate();
              resolve(UNAUDITABLE);
            }),
          );
        });
      },
      true,
    );
  },
};

/** The upstream's WebSocket, opened with the headers the transform stage built; or the refusal that stands for its failure. */
function openUpstream(url: string, req: IncomingMessage, ex: Exchange, maxPayload: number, timeoutMs: number, ca: Buffer | undefined): Promise<WebSocket | Refusal> {
  const headers: Record<string, string> = {};
  const flat = ex.upstreamHeaders ?? [];
  for (let i = 0; i < flat.length; i += 2) {
    const name = flat[i]!;
    // The handshake's own fields are the upstream connection's, made by the client library.
    if (name === 'host' || name.startsWith('sec-websocket-') || name === 'content-length' || name === 'transfer-encoding') continue;
    headers[name] = flat[i + 1]!;
  }
  const offered = req.headers['sec-websocket-protocol'];
  const protocols = offered === undefined ? [] : offered.split(',').map((p) => p.trim()).filter((p) => p !== '');
  return new Promise((resolve) => {
    const upstream = new WebSocket(url, protocols, { headers, maxPayload, handshakeTimeout: timeoutMs, perMessageDeflate: false, ...(ca === undefined ? {} : { ca }) });
    upstream.once('open', () => resolve(upstream));
    upstream.once('unexpected-response', (_request, res) => {
      res.resume();
      upstream.terminate();
      ex.upstreamStatus = res.statusCode ?? 0;
      resolve({ code: 'GW_UPSTREAM_BAD_RESPONSE', detail: `the upstream refused the WebSocket (${res.statusCode ?? 'no status'})` });
    });
    upstream.once('error', (err: Error) => {
      ex.upstreamFailure = (err as NodeJS.ErrnoException).code ?? err.message;
      resolve(/timed out/i.test(err.message) ? { code: 'GW_UPSTREAM_TIMEOUT', detail: 'the upstream did not accept the WebSocket in time' } : { code: 'GW_UPSTREAM_UNAVAILABLE', detail: 'the upstream WebSocket cannot be reached' });
    });
  });
}

/** A close code a peer sent that may be sent on (1005 and 1006 are never put on the wire). */
function sendable(code: number): number {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999) ? code : code === 1005 ? 1000 : CLOSE.upstreamGone[0];
}

function size(data: RawData): number {
  if (Buffer.isBuffer(data)) return data.length;
  if (Array.isArray(data)) return data.reduce((n, b) => n + b.length, 0);
  return data.byteLength;
}

function relay(ex: Exchange, client: WebSocket, upstream: WebSocket, idleTimeoutMs: number, deps: WebSocketDeps): void {
  const started = performance.now();
  const stats = { framesIn: 0, bytesIn: 0, framesOut: 0, bytesOut: 0 };
  const route = ex.route!;
  let ended: SocketClose | null = null;
  let reason = '';
  let closedBy: SocketClose['closedBy'] | null = null;
  let idle: NodeJS.Timeout | null = null;
  const touch = () => idle?.refresh();

  const entry = {
    identity: ex.identity,
    close: (code: number, text: string, why: string) => {
      if (closedBy !== null) return;
      closedBy = 'gateway';
      reason = why;
      client.close(code, text);
      upstream.close(code === CLOSE.shutdown[0] ? 1001 : 1000, 'closed by the gateway');
      // A peer that never answers the close frame is cut after a grace period.
      setTimeout(() => {
        client.terminate();
        upstream.terminate();
      }, 2_000).unref();
    },
  };
  const finish = (code: number) => {
    if (ended !== null) return;
    if (idle !== null) clearTimeout(idle);
    if (expiry !== null) clearTimeout(expiry);
    ended = { durationMs: performance.now() - started, ...stats, code, closedBy: closedBy ?? 'client', reason: reason || (closedBy ?? 'client') };
    ex.webSocket = ended;
    deps.sockets.remove(entry);
    deps.metrics?.socketClosed(route.template, ended.reason);
    // The exit phase: the access line, the metrics and the closing audit event.
    ex.closeExchange?.();
  };

  const pipe = (from: WebSocket, to: WebSocket, counted: 'in' | 'out') => {
    from.on('message', (data, isBinary) => {
      if (counted === 'in') {
        stats.framesIn++;
        stats.bytesIn += size(data);
      } else {
        stats.framesOut++;
        stats.bytesOut += size(data);
      }
      touch();
      if (to.readyState !== WebSocket.OPEN) return;
      to.send(data, { binary: isBinary }, () => {
        if (from.isPaused && to.bufferedAmount <= LOW_WATER_BYTES) from.resume();
      });
      if (to.bufferedAmount > HIGH_WATER_BYTES) from.pause();
    });
  };
  pipe(client, upstream, 'in');
  pipe(upstream, client, 'out');

  client.on('close', (code) => {
    if (closedBy === null) {
      closedBy = 'client';
      reason = code === 1009 ? 'too_large' : 'client';
      upstream.close(sendable(code));
    }
    finish(code);
  });
  upstream.on('close', (code) => {
    if (closedBy === null) {
      closedBy = 'upstream';
      reason = code === 1009 ? 'too_large' : 'upstream';
      client.close(sendable(code));
    }
  });
  const onError = (other: WebSocket) => (err: Error & { code?: string }) => {
    // A message over maxMessageBytes: the library closes that side with 1009; the other side is told the same.
    const tooLarge = err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH';
    if (closedBy === null) {
      closedBy = 'gateway';
      reason = tooLarge ? 'too_large' : 'error';
    }
    if (tooLarge) other.close(1009, 'message too large');
    else {
      client.terminate();
      upstream.terminate();
    }
  };
  client.on('error', onError(upstream));
  upstream.on('error', onError(client));

  idle = setTimeout(() => entry.close(CLOSE.idle[0], CLOSE.idle[1], 'idle'), idleTimeoutMs);
  idle.unref();
  const who = ex.identity;
  const expiresInMs = who === null ? null : (who.expiresAt + deps.clockSkewSeconds) * 1000 - Date.now();
  // A timer longer than 2^31 - 1 ms would fire at once; a token living that long (24 days) is closed when the timer runs out instead.
  const expiry = expiresInMs === null ? null : setTimeout(() => entry.close(CLOSE.expired[0], CLOSE.expired[1], 'expired'), Math.min(Math.max(0, expiresInMs), 2 ** 31 - 1));
  expiry?.unref();

  deps.sockets.add(entry);
  deps.metrics?.socketOpened(route.template);
  if (deps.audit !== null && route.auth === 'required') deps.audit.recordSocket(ex, 'open', null);
}
