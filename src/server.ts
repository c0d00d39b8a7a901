import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createSecureServer, type Http2Session } from 'node:http2';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { SecureContextOptions, Server as TlsServer } from 'node:tls';
import type { Env } from './config/env.js';
import { ERRORS, problem, PROBLEM_CONTENT_TYPE, type ErrorCode } from './errors.js';
import type { Logger } from './observability/logger.js';
import { requestIdFrom } from './pipeline/request-id.js';
import { MIN_TLS_VERSION, type TlsMaterial } from './tls.js';

/** Streams one HTTP/2 connection may have open: one client cannot take the circuit breaker's whole budget. */
const H2_MAX_STREAMS = 128;

/** How often the headers and request deadlines of open connections are checked. */
const CONNECTIONS_CHECK_MS = 500;

export interface ServerOptions {
  /** Null: plain HTTP (TLS ends at a proxy in front, or a development setup). */
  readonly tls: TlsMaterial | null;
  readonly http2: boolean;
  readonly maxHeaderBytes: number;
  readonly keepAliveTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly headersTimeoutMs: number;
}

export function serverOptions(env: Env, tls: TlsMaterial | null): ServerOptions {
  return {
    tls,
    http2: env.HTTP2_ENABLED,
    maxHeaderBytes: env.MAX_HEADER_BYTES,
    keepAliveTimeoutMs: env.KEEP_ALIVE_TIMEOUT_MS,
    requestTimeoutMs: env.CLIENT_REQUEST_TIMEOUT_MS,
    headersTimeoutMs: env.CLIENT_HEADERS_TIMEOUT_MS,
  };
}

/** The Strict-Transport-Security value of every answer over TLS; null without TLS or with HSTS_MAX_AGE_SECONDS=0. */
export function hstsValue(maxAgeSeconds: number, tls: TlsMaterial | null): string | null {
  return tls !== null && maxAgeSeconds > 0 ? `max-age=${maxAgeSeconds}; includeSubDomains` : null;
}

export interface GatewayServer {
  readonly server: Server;
  /** Hands a renewed certificate to the listener: connections opened from now on use it. */
  setSecureContext(material: TlsMaterial): void;
  /** Stops accepting connections, ends idle ones, and tells HTTP/2 clients to go (GOAWAY after their open streams). */
  close(): Promise<void>;
  closeIdleConnections(): void;
}

/**
 * The one HTTP stack: a `node:http` server, or with TLS an HTTPS one (HTTP/2 by ALPN and
 * HTTP/1.1 for clients that do not offer it, on the same port and with the same limits). Every
 * request, own endpoint or proxied, goes to `handle`. Malformed requests that never become one
 * (bad framing, headers too large, a client too slow) get the gateway's problem on the raw socket.
 */
export function createGatewayServer(
  options: ServerOptions,
  handle: (req: IncomingMessage, res: ServerResponse) => void,
  logger: Logger,
  /** Requests with Upgrade (WebSockets) come here with their raw socket, over HTTP/1.1. */
  upgrade?: (req: IncomingMessage, socket: Duplex, head: Buffer) => void,
): GatewayServer {
  // A missing Host gets the gateway's own 400 (pipeline/framing.ts), not Node's bare one.
  // Node checks the headers and request deadlines only this often (30 s by default): a slowloris
  // client would hold its connection up to 30 s past CLIENT_HEADERS_TIMEOUT_MS.
  const common = { maxHeaderSize: options.maxHeaderBytes, requireHostHeader: false, connectionsCheckingInterval: CONNECTIONS_CHECK_MS };
  const sessions = new Set<Http2Session>();
  let server: Server;
  let tlsServer: TlsServer | null = null;
  const material = options.tls;
  if (material === null) server = createHttpServer(common, handle);
  else if (options.http2) {
    const h2 = createSecureServer(
      { allowHTTP1: true, cert: material.cert, key: material.key, minVersion: MIN_TLS_VERSION, settings: { maxHeaderListSize: options.maxHeaderBytes, maxConcurrentStreams: H2_MAX_STREAMS } },
      handle as unknown as Parameters<typeof createSecureServer>[1],
    );
    h2.on('session', (session: Http2Session) => {
      sessions.add(session);
      // An idle session ends like an idle HTTP/1.1 keep-alive connection: gracefully (GOAWAY).
      session.setTimeout(options.keepAliveTimeoutMs, () => session.close());
      const idle = idleWithoutRequests(session, options.headersTimeoutMs, options.keepAliveTimeoutMs);
      session.once('close', () => {
        sessions.delete(session);
        idle.stop();
      });
    });
    tlsServer = h2;
    server = h2 as unknown as Server;
    (server as { maxHeaderSize?: number }).maxHeaderSize = options.maxHeaderBytes;
    // Its HTTP/1.1 connections (allowHTTP1) are checked for the headers and request deadlines by
    // the same timer as node:http's, started when it listens, but createSecureServer takes no
    // option for its interval (30 s): without this a slowloris client over TLS held its
    // connection up to 30 s past CLIENT_HEADERS_TIMEOUT_MS.
    (server as { connectionsCheckingInterval?: number }).connectionsCheckingInterval = CONNECTIONS_CHECK_MS;
  } else {
    const https = createHttpsServer({ ...common, cert: material.cert, key: material.key, minVersion: MIN_TLS_VERSION }, handle);
    tlsServer = https;
    server = https;
  }
  server.keepAliveTimeout = options.keepAliveTimeoutMs;
  server.requestTimeout = options.requestTimeoutMs;
  server.headersTimeout = options.headersTimeoutMs;
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => answerClientError(err, socket, logger));
  if (upgrade !== undefined) server.on('upgrade', upgrade);
  return {
    server,
    setSecureContext: (m) => tlsServer!.setSecureContext({ cert: m.cert, key: m.key, minVersion: MIN_TLS_VERSION } satisfies SecureContextOptions),
    closeIdleConnections: () => server.closeIdleConnections(),
    close: () =>
      new Promise<void>((resolve) => {
        for (const session of sessions) session.close();
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}

/**
 * Node has no headers deadline for HTTP/2, and its idle timeout counts bytes: a client dripping a
 * HEADERS frame a byte at a time held its session for ever. Here a session is idle while it has
 * no stream open, whatever frames it sends: it has CLIENT_HEADERS_TIMEOUT_MS for its first
 * request, as an HTTP/1.1 connection has for its first head, and KEEP_ALIVE_TIMEOUT_MS between
 * requests; then it is destroyed (a request whose headers never completed has no stream to wait for).
 */
function idleWithoutRequests(session: Http2Session, firstMs: number, betweenMs: number): { stop(): void } {
  let open = 0;
  const end = () => session.destroy();
  let timer: NodeJS.Timeout | null = setTimeout(end, firstMs).unref();
  session.on('stream', (stream) => {
    open++;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    stream.once('close', () => {
      if (--open === 0 && !session.destroyed) timer = setTimeout(end, betweenMs).unref();
    });
  });
  return {
    stop: () => {
      if (timer !== null) clearTimeout(timer);
      timer = null;
    },
  };
}

function answerClientError(err: NodeJS.ErrnoException, socket: Socket, logger: Logger): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  // One answer per exchange (RFC 9112 9.6): bytes that fail to parse after a request whose answer
  // is under way or written are not a request of their own. That answer is the last on this
  // connection; nothing is written after it.
  const inFlight = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
  if (inFlight != null) {
    if (inFlight.writableEnded) {
      socket.destroySoon();
      return;
    }
    if (inFlight.req.complete) {
      inFlight.once('close', () => socket.destroySoon());
      return;
    }
    // The request's own body was malformed. Once its answer has begun, a reset is the only signal left.
    if (inFlight.headersSent) {
      socket.destroy();
      return;
    }
  }
  const code: ErrorCode =
    err.code === 'HPE_HEADER_OVERFLOW' ? 'GW_HEADERS_TOO_LARGE' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'GW_REQUEST_TIMEOUT' : 'GW_BAD_REQUEST';
  const id = requestIdFrom(undefined);
  const detail =
    code === 'GW_HEADERS_TOO_LARGE' ? 'the request line and headers are too large' : code === 'GW_REQUEST_TIMEOUT' ? 'the request was not received in time' : 'the request is not valid HTTP/1.1';
  const body = JSON.stringify(problem(code, id, detail));
  const { status, title } = ERRORS[code];
  logger.info({ request_id: id, error_code: code, cause: err.code, ip_address: socket.remoteAddress }, 'rejected malformed request');
  socket.end(
    `HTTP/1.1 ${status} ${title}\r\nContent-Type: ${PROBLEM_CONTENT_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Request-ID: ${id}\r\nConnection: close\r\n\r\n${body}`,
  );
}
