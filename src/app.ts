import cluster from 'node:cluster';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { createServer as createHttpServer, type IncomingMessage, type Server, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createSecureServer, type Http2Session } from 'node:http2';
import { createServer as createHttpsServer } from 'node:https';
import type { Server as TlsServer } from 'node:tls';
import type { Socket } from 'node:net';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { AuditTrail } from './audit/audit-trail.js';
import { JwtVerifier } from './auth/jwt.js';
import { compileConfig, type CompiledConfig } from './config/compile.js';
import { trustedProxyList } from './config/env.js';
import { RESERVED_PATHS } from './config/routes-schema.js';
import { ConfigError, type GatewayConfig } from './config/load.js';
import { RoutesReloader, type ReloadResult } from './config/reload.js';
import type { RoutesFile } from './config/routes-schema.js';
import { ERRORS, problem, PROBLEM_CONTENT_TYPE, writeProblem, type ErrorCode } from './errors.js';
import { AccessLog } from './observability/access-log.js';
import { HealthMonitor, resolveMemoryLimit } from './observability/health.js';
import { Metrics, UNMATCHED_PATH } from './observability/metrics.js';
import type { Loggers, Logger } from './observability/logger.js';
import { authenticate, type StageResult } from './pipeline/authenticate.js';
import { authorize } from './pipeline/authorize.js';
import { ClientAddress } from './pipeline/client-address.js';
import { Exchange } from './pipeline/exchange.js';
import { forward } from './pipeline/forward.js';
import { FramingGuard } from './pipeline/framing.js';
import { normalizePath } from './pipeline/normalize-path.js';
import { AccessCheck } from './pipeline/access-check.js';
import { corsHeaders, preflight, PREFLIGHT_VARY } from './pipeline/cors.js';
import { AuthFailureLimit } from './pipeline/auth-failure-limit.js';
import { AuthFlows } from './pipeline/auth-flows.js';
import { requestIdFrom } from './pipeline/request-id.js';
import { upstreamRequestHeaders } from './pipeline/transform.js';
import { SessionValidator } from './auth/sessions.js';
import { AccessControl } from './stores/failover-access-store.js';
import { MemoryAccessStore } from './stores/memory-access-store.js';
import { RedisAccessStore } from './stores/redis-access-store.js';
import { createRedisClient } from './stores/redis-client.js';
import { BREAK_GLASS_HEADER } from './pipeline/authorize.js';
import { UpstreamPools } from './upstream/pools.js';
import { UpstreamRegistry } from './upstream/registry.js';
import { CertificateWatcher, MIN_TLS_VERSION, readTlsMaterial } from './tls.js';
import { VERSION } from './version.js';
import { SpanKind } from '@opentelemetry/api';
import { traceIdOf, Tracing, tracingConfigured } from './observability/tracing.js';
import { startAdminListener } from './observability/diagnostics.js';
import type { CompiledRoute } from './config/compile.js';
import { workerMetrics } from './workers.js';

declare module 'fastify' {
  interface FastifyRequest {
    gw: Exchange;
  }
}

export interface Gateway {
  readonly app: FastifyInstance;
  readonly health: HealthMonitor;
  /** Readiness turns false, new connections are refused, in-flight requests finish. */
  close(): Promise<void>;
  /** Re-reads the routes file and swaps it in, or refuses it and keeps the running one (SIGHUP). */
  reload(): Promise<ReloadResult>;
  isShuttingDown(): boolean;
}

export async function buildGateway(config: GatewayConfig, { log: logger, access }: Loggers): Promise<Gateway> {
  const { env } = config;
  // Everything that can refuse the config is read before anything is opened or started.
  const tlsMaterial = env.TLS_CERT_FILE ? await readTlsMaterial(env.TLS_CERT_FILE, env.TLS_KEY_FILE!) : null;
  const pools = new UpstreamPools();
  const upstreamCa = env.UPSTREAM_CA_FILE === undefined ? undefined : await readFile(env.UPSTREAM_CA_FILE).catch((err: NodeJS.ErrnoException) => {
    throw new ConfigError([`UPSTREAM_CA_FILE: cannot read "${env.UPSTREAM_CA_FILE}" (${err.code ?? 'error'})`]);
  });
  const upstreams = new UpstreamRegistry(logger, undefined, upstreamCa);
  const firstPlan = await upstreams.prepare(config.routes.services);
  /**
   * The routes in force. A reload replaces the whole object in one assignment: a request sees
   * the old config or the new one, never a mix, and one already routed keeps its route.
   */
  let compiled: CompiledConfig = compileConfig(config.routes, env, firstPlan.services);
  upstreams.commit(firstPlan);
  const swapIn = async (routes: RoutesFile): Promise<void> => {
    const plan = await upstreams.prepare(routes.services);
    let next: CompiledConfig;
    try {
      next = compileConfig(routes, env, plan.services);
    } catch (err) {
      upstreams.discard(plan);
      throw err;
    }
    if (shuttingDown) {
      upstreams.discard(plan);
      throw new Error('the gateway is shutting down');
    }
    compiled = next;
    upstreams.commit(plan);
  };
  const verifier = await JwtVerifier.create({
    keys: [
      { secret: env.JWT_SECRET, kid: env.JWT_KID },
      ...(env.JWT_PREVIOUS_SECRET !== undefined ? [{ secret: env.JWT_PREVIOUS_SECRET, kid: env.JWT_PREVIOUS_KID, untilMs: env.JWT_PREVIOUS_SECRET_EXPIRES_AT }] : []),
    ],
    maxLifetimeSeconds: env.JWT_EXPIRES_IN,
    clockSkewSeconds: env.JWT_CLOCK_SKEW_SECONDS,
    issuer: env.JWT_ISSUER,
    audience: env.JWT_AUDIENCE,
    jwksUrl: env.JWT_JWKS_URL,
    jwksTimeoutMs: env.AUTH_REQUEST_TIMEOUT_MS,
  });
  const addresses = new ClientAddress(env.TRUSTED_PROXIES.length > 0 ? trustedProxyList(env.TRUSTED_PROXIES) : null);
  const accessLog = new AccessLog(access, env.LOG_SLOW_REQUEST_MS);
  const tls = Boolean(env.TLS_CERT_FILE);
  let shuttingDown = false;
  const exchangeFor = (id: string, raw: IncomingMessage): Exchange => {
    const peer = addresses.peer(raw.socket.remoteAddress);
    const trusted = addresses.isTrusted(peer);
    return new Exchange(id, performance.now(), peer, trusted, trusted ? addresses.clientIp(peer, raw.headers['x-forwarded-for']) : peer);
  };
  const framing = new FramingGuard();

  const redis = env.REDIS_URL ? createRedisClient(env.REDIS_URL, env.REDIS_COMMAND_TIMEOUT_MS, logger) : null;
  const local = new MemoryAccessStore();
  const accessControl = new AccessControl(redis ? new RedisAccessStore(redis) : null, local, logger);
  // Revocations announced by other replicas, mirrored for use while Redis is away.
  const subscriber = env.REDIS_URL ? createRedisClient(env.REDIS_URL, env.REDIS_COMMAND_TIMEOUT_MS, logger) : null;
  if (subscriber !== null) accessControl.listen(subscriber);
  const audit = env.AUDIT_ENABLED
    ? await AuditTrail.open(
        {
          serviceUrl: env.AUDIT_SERVICE_URL,
          // Each worker of WORKERS > 1 keeps a spool of its own, by slot, so a restarted worker takes over its predecessor's.
          spoolDir: cluster.isWorker ? join(env.AUDIT_SPOOL_DIR, `worker-${process.env.GATEWAY_WORKER_SLOT ?? cluster.worker!.id}`) : env.AUDIT_SPOOL_DIR,
          spoolMaxBytes: env.AUDIT_SPOOL_MAX_MB * 1024 * 1024,
          requestTimeoutMs: env.AUDIT_REQUEST_TIMEOUT_MS,
          ca: upstreamCa,
        },
        logger,
      ).catch((err: unknown) => {
        throw new ConfigError([`AUDIT_SPOOL_DIR: cannot use "${env.AUDIT_SPOOL_DIR}" (${(err as Error).message}); point it at a writable folder of this gateway's own`]);
      })
    : null;
  const tracing = tracingConfigured(config.source) ? new Tracing(config.source, VERSION) : null;
  const memoryLimitBytes = await resolveMemoryLimit(env.MEMORY_LIMIT_MB);
  const metrics = env.ENABLE_METRICS ? createMetrics(() => upstreams.list(), audit, memoryLimitBytes) : null;
  const reloader = new RoutesReloader(config.routesFile, config.source, swapIn, logger, (ok) => metrics?.configReload(ok));
  if (env.ROUTES_WATCH) reloader.watch(await readFile(config.routesFile, 'utf8').catch(() => undefined));
  const authService = pools.get(new URL(env.AUTH_SERVICE_URL).origin, { connectTimeoutMs: env.AUTH_REQUEST_TIMEOUT_MS, maxConnections: 64, ca: upstreamCa });
  const accessCheck = new AccessCheck(accessControl, new SessionValidator(authService, env.AUTH_REQUEST_TIMEOUT_MS), logger, (ex) => metrics?.rateLimitExceeded(ex.identity?.userId ?? ex.clientIp));
  const authFailures = new AuthFailureLimit(accessControl, env.RATE_LIMIT_PER_MINUTE, logger);
  const flows = new AuthFlows(
    accessControl,
    {
      maxFailuresPerAccount: env.LOGIN_MAX_FAILURES_PER_ACCOUNT,
      maxFailuresPerIp: env.LOGIN_MAX_FAILURES_PER_IP,
      failureWindowMs: env.LOGIN_FAILURE_WINDOW_SECONDS * 1000,
      maxTokenLifetimeSeconds: env.JWT_EXPIRES_IN,
      clockSkewSeconds: env.JWT_CLOCK_SKEW_SECONDS,
    },
    logger,
  );

  /** For /health and /debug/vars: each service's instances in rotation, and the audit trail's state. */
  const serviceCounts = () => upstreams.list().map((svc) => ({ name: svc.name, ...svc.counts(performance.now()) }));
  const auditState = () => (audit === null ? null : { problem: audit.problem, failing: audit.failing, backlogBytes: audit.backlogBytes });
  const health = new HealthMonitor({
    version: VERSION,
    authServiceUrl: env.AUTH_SERVICE_URL,
    redisPing: redis ? () => redis.ping() : null,
    sharedStoreDegraded: () => accessControl.degraded,
    probeSharedStore: () => accessControl.probe(),
    cacheMs: env.HEALTH_CACHE_MS,
    eventLoopThresholdMs: env.HEALTH_EVENT_LOOP_THRESHOLD_MS,
    memoryLimitBytes,
    isShuttingDown: () => shuttingDown,
    services: serviceCounts,
    audit: auditState,
    onReport: (report) => {
      for (const [name, status] of Object.entries(report.dependencies)) metrics?.dependencyHealth(name, status === 'healthy');
      if (report.audit) metrics?.dependencyHealth('audit', report.audit.status === 'healthy');
    },
    onChange: (status, checks) => logger[status === 'healthy' ? 'info' : 'warn']({ status, checks }, `health is now ${status}`),
  });

  // The dependency gauges (and their alert) stay current even when nothing probes /health.
  const healthRefresh = metrics === null ? null : setInterval(() => void health.report().catch(() => undefined), HEALTH_REFRESH_MS);
  healthRefresh?.unref();

  /**
   * One server, two doors: the gateway's own endpoints go to the framework, everything else
   * walks the request path below directly, without the framework's per-request machinery.
   */
  const serverOptions = { maxHeaderSize: env.MAX_HEADER_BYTES, requireHostHeader: false };
  const hsts = tlsMaterial !== null && env.HSTS_MAX_AGE_SECONDS > 0 ? `max-age=${env.HSTS_MAX_AGE_SECONDS}; includeSubDomains` : null;
  const hstsHeader: readonly string[] | null = hsts === null ? null : Object.freeze(['strict-transport-security', hsts]);
  let tlsServer: TlsServer | null = null;
  /** HTTP/2 sessions, closed gracefully (GOAWAY after their open streams) at shutdown. */
  const sessions = new Set<Http2Session>();
  const app = Fastify({
    logger: false,
    requestIdHeader: false,
    genReqId: (req) => requestIdFrom(req.headers['x-request-id']),
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    clientErrorHandler: (err: NodeJS.ErrnoException, socket: Socket) => answerClientError(err, socket, logger),
    serverFactory: (ownEndpoints) => {
      const handler = (req: IncomingMessage, res: ServerResponse) => {
        if (!isOwnEndpoint(req.url!)) return handleRequest(req, res);
        if (hsts !== null) res.setHeader('strict-transport-security', hsts);
        ownEndpoints(req, res);
      };
      // A missing Host gets the gateway's own 400 (framing.ts), not Node's bare one.
      let server: HttpServer;
      if (tlsMaterial === null) server = createHttpServer(serverOptions, handler);
      else if (env.HTTP2_ENABLED) {
        // One port, both protocols: ALPN picks h2, clients that do not offer it get HTTP/1.1
        // from the same server with the same limits.
        const h2 = createSecureServer(
          { allowHTTP1: true, cert: tlsMaterial.cert, key: tlsMaterial.key, minVersion: MIN_TLS_VERSION, settings: { maxHeaderListSize: env.MAX_HEADER_BYTES, maxConcurrentStreams: H2_MAX_STREAMS } },
          handler as unknown as Parameters<typeof createSecureServer>[1],
        );
        h2.on('session', (session: Http2Session) => {
          sessions.add(session);
          session.once('close', () => sessions.delete(session));
          // An idle session ends like an idle HTTP/1.1 keep-alive connection: gracefully (GOAWAY).
          session.setTimeout(env.KEEP_ALIVE_TIMEOUT_MS, () => session.close());
        });
        tlsServer = h2;
        server = h2 as unknown as HttpServer;
        (server as { maxHeaderSize?: number }).maxHeaderSize = env.MAX_HEADER_BYTES;
      } else {
        const https = createHttpsServer({ ...serverOptions, cert: tlsMaterial.cert, key: tlsMaterial.key, minVersion: MIN_TLS_VERSION }, handler);
        tlsServer = https;
        server = https;
      }
      server.keepAliveTimeout = env.KEEP_ALIVE_TIMEOUT_MS;
      server.requestTimeout = env.CLIENT_REQUEST_TIMEOUT_MS;
      server.headersTimeout = env.CLIENT_HEADERS_TIMEOUT_MS;
      return server;
    },
  });
  const certificates =
    tlsMaterial === null
      ? null
      : new CertificateWatcher(env.TLS_CERT_FILE!, env.TLS_KEY_FILE!, tlsMaterial, (m) => tlsServer!.setSecureContext({ cert: m.cert, key: m.key, minVersion: MIN_TLS_VERSION }), logger);
  certificates?.watch();

  // The own endpoints take no body: whatever a client sends is never parsed or buffered.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null));

  app.decorateRequest('gw', null as unknown as Exchange);

  /** The gate every request passes first, own endpoint or proxied: framing, then shutdown. */
  const admission = (req: IncomingMessage): StageResult => {
    const badFraming = framing.check(req);
    if (badFraming !== null) {
      framing.refuseConnection(req.socket);
      return { code: 'GW_BAD_REQUEST', detail: badFraming, headers: CLOSE };
    }
    if (shuttingDown) return { code: 'GW_SHUTTING_DOWN', detail: 'the gateway is shutting down; retry on a new connection', headers: CLOSE };
    return null;
  };

  app.addHook('onRequest', (request, reply, done) => {
    request.gw = exchangeFor(request.id, request.raw);
    const refused = admission(request.raw);
    if (refused !== null) {
      reply.hijack();
      refuse(reply.raw, request.gw, refused);
      return;
    }
    done();
  });

  // on the way out: access log and metrics, labelled by route template, never by raw path
  const recordExchange = (ex: Exchange, req: IncomingMessage, res: ServerResponse, label: string) => {
    const ms = performance.now() - ex.startedAt;
    const status = res.writableFinished ? res.statusCode : 499;
    accessLog.write(ex, req, status, ms, label.startsWith('/health'));
    if (audit !== null && ex.route !== null && ex.route.auth === 'required' && !ex.preflight) audit.record(ex, req.method!, status);
    if (ex.span !== null) endSpans(ex, status);
    metrics?.request(req.method!, label, status, ms / 1000);
    // close() ends only the connections idle at that moment; a keep-alive connection whose
    // request was in flight becomes idle now, and must not hold the shutdown open.
    if (shuttingDown) setImmediate(closeIdle);
  };
  const closeIdle = () => app.server.closeIdleConnections();
  app.addHook('onResponse', (request, reply, done) => {
    recordExchange(request.gw, request.raw, reply.raw, request.routeOptions.url ?? UNMATCHED_PATH);
    done();
  });
  /** Shared by every proxied response ('close' follows 'finish', or an abort): no closure per request. */
  function exchangeClosed(this: ServerResponse & { [EXCHANGE]?: Exchange }): void {
    const ex = this[EXCHANGE]!;
    ex.inFlight?.clientClosed();
    recordExchange(ex, this.req, this, ex.route !== null ? ex.route.template : UNMATCHED_PATH);
  }

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, request, reply) => {
    const ex = request.gw;
    const status = err.statusCode ?? 500;
    if (status >= 500) logger.error({ err, request_id: ex?.id }, 'unhandled error');
    const code: ErrorCode = status === 400 ? 'GW_BAD_REQUEST' : status === 413 ? 'GW_BODY_TOO_LARGE' : status === 404 ? 'GW_ROUTE_NOT_FOUND' : 'GW_INTERNAL';
    reject(reply, ex, code, code === 'GW_INTERNAL' ? 'the gateway failed to handle the request' : 'the request could not be processed');
  });

  const report = async (reply: FastifyReply, ready: boolean) => {
    // The spec's fields only: why a check failed is for operators (the log), not for anyone who
    // can reach an unauthenticated endpoint.
    const { checks: _checks, ...result } = await health.report();
    const ok = ready ? !shuttingDown && result.status !== 'unhealthy' : result.status !== 'unhealthy';
    return reply.code(ok ? 200 : 503).header('cache-control', 'no-store').send(result);
  };
  app.get('/health', (_req, reply) => report(reply, false));
  app.get('/health/ready', (_req, reply) => report(reply, true));
  if (metrics !== null) {
    app.get('/metrics', async (_req, reply) => {
      const { contentType, body } = await metrics.exposition();
      return reply.header('content-type', contentType).header('cache-control', 'no-store').send(body);
    });
  }
  app.get('/health/live', (_req, reply) => {
    reply.header('cache-control', 'no-store').send({ status: 'alive', service: 'api-gateway', version: VERSION });
  });

  /**
   * The request path, in order: request id -> framing -> canonical path -> route match ->
   * authenticate -> authorize -> access check (revocation, session, rate limit: one store round
   * trip) -> transform -> forward (or an auth flow); on the way out (on the
   * response's 'close') the access line and metrics. Each stage answers with the one error shape
   * or lets the request on.
   */
  const handleRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const ex = exchangeFor(requestIdFrom(req.headers['x-request-id']), req);
    ex.answerHeaders = hstsHeader;
    if (tracing !== null) {
      ex.span = tracing.startServer(req.method!, req.headers);
      const context = ex.span.spanContext();
      ex.traceId = context.traceId;
    } else if (req.headers.traceparent !== undefined) ex.traceId = traceIdOf(req.headers.traceparent);
    (res as ServerResponse & { [EXCHANGE]?: Exchange })[EXCHANGE] = ex;
    res.on('close', exchangeClosed);
    const refused = admission(req);
    if (refused !== null) return refuse(res, ex, refused);
    try {
      routeAndAuthenticate(ex, req, res);
    } catch (err) {
      failed(ex, res, err);
    }
  };

  // The stages run synchronously while they can (public route, known token, in-memory limits);
  // only a stage that waits on I/O (a new token's signature, Redis) continues in a callback.
  const routeAndAuthenticate = (ex: Exchange, req: IncomingMessage, res: ServerResponse): void => {
    const url = req.url!;
    const q = url.indexOf('?');
    const path = normalizePath(q === -1 ? url : url.slice(0, q));
    if (path === null) return answer(res, ex, 'GW_BAD_PATH', 'the request path is not a valid absolute path');
    ex.path = path;
    ex.query = q === -1 ? '' : url.slice(q + 1);

    const origin = req.headers.origin;
    // A preflight is the gateway's to answer: no token (browsers send none), never forwarded.
    if (origin !== undefined && req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined) {
      return answerPreflight(ex, req, res, path, origin);
    }
    const config = compiled;
    const match = config.router.match(req.method!, path, req.headers);
    const cors = match.kind === 'found' ? match.route.cors : config.cors;
    if (cors !== null && (origin !== undefined || cors.varyOrigin)) ex.answerHeaders = corsHeaders(cors, origin, ex.answerHeaders);
    if (match.kind === 'not-found') return answer(res, ex, 'GW_ROUTE_NOT_FOUND', 'no route matches this path');
    if (match.kind === 'method-not-allowed') {
      return answer(res, ex, 'GW_METHOD_NOT_ALLOWED', `this route accepts ${match.allow}`, { allow: match.allow });
    }
    ex.route = match.route;
    ex.params = match.params;
    ex.permissions = config.permissions;
    if (ex.span !== null) {
      ex.span.updateName(`${req.method} ${match.route.template}`);
      ex.span.setAttribute('http.route', match.route.template);
      if (match.route.auth === 'required') ex.stageSpan = tracing!.startChild(ex.span, 'authenticate');
    }

    const verdict = authenticate(ex, req.headers.authorization, verifier, authFailures);
    if (verdict instanceof Promise) verdict.then((v) => authorizeAndLimit(ex, req, res, v)).catch((err: unknown) => failed(ex, res, err));
    else authorizeAndLimit(ex, req, res, verdict);
  };

  const answerPreflight = (ex: Exchange, req: IncomingMessage, res: ServerResponse, path: string, origin: string): void => {
    const method = String(req.headers['access-control-request-method']).trim().toUpperCase();
    const announced = new Set((req.headers['access-control-request-headers'] ?? '').split(',').map((h) => h.trim().toLowerCase()));
    const match = compiled.router.match(method, path, req.headers, announced);
    if (match.kind === 'not-found') return answer(res, ex, 'GW_ROUTE_NOT_FOUND', 'no route matches this path', { vary: PREFLIGHT_VARY });
    ex.route = match.kind === 'found' ? match.route : null;
    ex.preflight = true;
    const verdict =
      match.kind === 'method-not-allowed' ? { ok: false as const, detail: `this route accepts ${match.allow}` } : preflight(match.route.cors, origin, method, req.headers);
    if (!verdict.ok) return answer(res, ex, 'GW_CORS_REJECTED', `preflight refused: ${verdict.detail}`, { vary: PREFLIGHT_VARY });
    const fields: Record<string, string> = { ...verdict.headers, 'x-request-id': ex.id, 'content-length': '0' };
    if (hsts !== null) fields['strict-transport-security'] = hsts;
    res.writeHead(204, fields);
    res.end();
  };

  const authorizeAndLimit = (ex: Exchange, req: IncomingMessage, res: ServerResponse, authenticated: StageResult): void => {
    if (ex.stageSpan !== null) endStage(ex, authenticated);
    if (authenticated !== null) {
      if (authenticated.code === 'GW_RATE_LIMITED') metrics?.rateLimitExceeded(ex.clientIp);
      else {
        metrics?.authFailure(authenticated.code);
        if (authenticated.code !== 'GW_AUTH_UNAVAILABLE') authFailures.failed(ex.clientIp);
      }
      return refuse(res, ex, authenticated);
    }
    const denied = authorize(ex, ex.permissions!, req.headers[BREAK_GLASS_HEADER]);
    if (denied !== null) return refuse(res, ex, denied);
    if (ex.breakGlass !== null) {
      logger.warn({ request_id: ex.id, route: ex.route!.name, user_id: ex.identity!.userId, break_glass: true }, 'break-glass access');
    }
    if (ex.span !== null) ex.stageSpan = tracing!.startChild(ex.span, 'access_check');
    const verdict = accessCheck.check(ex);
    if (verdict instanceof Promise) verdict.then((v) => transformAndForward(ex, req, res, v)).catch((err: unknown) => failed(ex, res, err));
    else transformAndForward(ex, req, res, verdict);
  };

  const transformAndForward = (ex: Exchange, req: IncomingMessage, res: ServerResponse, limited: StageResult): void => {
    if (ex.stageSpan !== null) endStage(ex, limited);
    if (limited !== null) {
      if (limited.code === 'GW_AUTH_TOKEN_REVOKED' || limited.code === 'GW_AUTH_SESSION_INVALID') metrics?.authFailure(limited.code);
      return refuse(res, ex, limited);
    }
    const route = ex.route!;
    // PHI is never served unaudited: with the spool full or unwritable the answer is 503.
    if (route.phi && audit !== null) {
      if (!audit.accepting) return answer(res, ex, 'GW_AUDIT_UNAVAILABLE', 'the audit trail cannot record this request; PHI is not served unaudited', { 'retry-after': '30' });
      ex.auditAdmitted = true;
    }
    if (route.action === null) return forward(ex, route, req, res, upstreamHeaders(ex, req, route), onForwarded, null);
    flows
      .run(ex, req, res, (_ex, body) => forward(ex, route, req, res, withLength(upstreamHeaders(ex, req, route), body.length), onForwarded, body))
      .catch((err: unknown) => failed(ex, res, err));
  };

  /** The headers the upstream gets; with tracing, the upstream call's span starts here and its context goes along. */
  const upstreamHeaders = (ex: Exchange, req: IncomingMessage, route: CompiledRoute): string[] => {
    const headers = upstreamRequestHeaders(ex, req.headers, tls, route.preserveHost);
    if (ex.span === null) return headers;
    ex.upstreamSpan = tracing!.startChild(ex.span, 'upstream', SpanKind.CLIENT, { 'gateway.service': route.service?.name ?? '' });
    return tracing!.inject(headers, ex.upstreamSpan);
  };

  const failed = (ex: Exchange, res: ServerResponse, err: unknown): void => {
    logger.error({ err, request_id: ex.id }, 'unhandled error');
    answer(res, ex, 'GW_INTERNAL', 'the gateway failed to handle the request');
  };
  const onForwarded = (ex: Exchange, err: Error | null) => {
    ex.after?.(ex);
    // The gateway's own refusals (breaker, no instance) are in the access line; this is for upstream failures.
    if (err !== null && ex.errorCode !== null && ex.upstreamOrigin !== null) {
      logger.warn({ request_id: ex.id, route: ex.route?.name, upstream: ex.upstreamOrigin, error_code: ex.errorCode, cause: (err as NodeJS.ErrnoException).code }, 'upstream request failed');
    }
  };
  // An own endpoint with another method is 405; /metrics with ENABLE_METRICS=false is 404.
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?', 1)[0]!;
    if (path === '/metrics' && metrics === null) return reject(reply, request.gw, 'GW_ROUTE_NOT_FOUND', 'metrics are disabled (ENABLE_METRICS=false)');
    reject(reply, request.gw, 'GW_METHOD_NOT_ALLOWED', 'the gateway answers GET here', { allow: 'GET, HEAD' });
  });

  await app.ready();
  let admin: Server | null = null;

  const gateway: Gateway = {
    app,
    health,
    isShuttingDown: () => shuttingDown,
    async reload() {
      await certificates?.reload();
      return reloader.reload();
    },
    async close() {
      if (shuttingDown) return;
      shuttingDown = true;
      reloader.close();
      certificates?.close();
      admin?.close();
      if (healthRefresh !== null) clearInterval(healthRefresh);
      for (const session of sessions) session.close();
      await app.close();
      accessLog.flush();
      await Promise.all([pools.close(), upstreams.close(), audit?.close(AUDIT_DRAIN_MS), tracing?.shutdown()]);
      health.stop();
      local.close();
      redis?.disconnect();
      subscriber?.disconnect();
    },
  };
  if (env.ADMIN_PORT !== 0) {
    // Workers of WORKERS > 1 take consecutive ports from ADMIN_PORT, one each.
    const adminPort = env.ADMIN_PORT + (cluster.isWorker ? Number(process.env.GATEWAY_WORKER_SLOT ?? 0) : 0);
    try {
      admin = await startAdminListener(
        adminPort,
        {
          version: VERSION,
          metrics: metrics === null ? null : () => metrics.exposition(),
          services: serviceCounts,
          audit: auditState,
        },
        logger,
      );
    } catch (err) {
      await gateway.close();
      throw new ConfigError([`ADMIN_PORT: cannot listen on 127.0.0.1:${adminPort} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); pick a free port or 0`]);
    }
  }
  return gateway;
}

const EXCHANGE = Symbol('exchange');

/** Ends the stage span under way (authentication, access check) with the stage's verdict. */
function endStage(ex: Exchange, verdict: StageResult): void {
  const span = ex.stageSpan!;
  ex.stageSpan = null;
  if (verdict !== null) span.setAttribute('error.type', verdict.code);
  span.end();
}

/** Ends the exchange's spans on the way out: the upstream call's, a stage's cut short, and the server span. */
function endSpans(ex: Exchange, status: number): void {
  if (ex.stageSpan !== null) endStage(ex, null);
  const upstream = ex.upstreamSpan;
  if (upstream !== null) {
    if (ex.upstreamOrigin !== null) Tracing.setServer(upstream, ex.upstreamOrigin);
    if (ex.retries > 0) upstream.setAttribute('gateway.retries', ex.retries);
    Tracing.endWithStatus(upstream, ex.upstreamStatus, ex.upstreamStatus === 0 ? ex.errorCode : null);
  }
  Tracing.endWithStatus(ex.span!, status, ex.errorCode);
}

/** Streams one HTTP/2 connection may have open: one client cannot take the circuit breaker's whole budget. */
const H2_MAX_STREAMS = 128;

/** How often the health checks run by themselves, for the dependency gauges. */
const HEALTH_REFRESH_MS = 15_000;

/** At shutdown, how long the audit backlog may take to reach the audit service before the spool keeps it. */
const AUDIT_DRAIN_MS = 2_000;

/** In a worker of WORKERS > 1, /metrics shows every worker's numbers, merged by the primary. */
function createMetrics(upstreams: () => ReturnType<UpstreamRegistry['list']>, audit: AuditTrail | null, memoryLimitBytes: number): Metrics {
  if (!cluster.isWorker) return new Metrics(upstreams, null, audit, memoryLimitBytes);
  let fetchMerged: (() => Promise<string>) | null = null;
  const metrics = new Metrics(upstreams, () => fetchMerged!(), audit, memoryLimitBytes);
  fetchMerged = workerMetrics(metrics.registry);
  return metrics;
}

/** A header list whose Content-Length is that of the body the gateway sends (auth flows re-serialise it). */
function withLength(headers: string[], length: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) if (headers[i] !== 'content-length') out.push(headers[i]!, headers[i + 1]!);
  if (length > 0) out.push('content-length', String(length));
  return out;
}

/** Own endpoints, matched on the path before the query; everything else is proxied. */
const OWN_ENDPOINTS: ReadonlySet<string> = new Set(RESERVED_PATHS);

function isOwnEndpoint(url: string): boolean {
  const q = url.indexOf('?');
  return OWN_ENDPOINTS.has(q === -1 ? url : url.slice(0, q));
}

function answer(res: ServerResponse, ex: Exchange, code: ErrorCode, detail: string, headers?: Record<string, string>): void {
  ex.errorCode = code;
  writeProblem(res, code, ex.id, detail, headers, ex.answerHeaders);
}

const CLOSE = { connection: 'close' };

/** Answers with a stage's verdict. */
function refuse(res: ServerResponse, ex: Exchange, verdict: NonNullable<StageResult>): void {
  answer(res, ex, verdict.code, verdict.detail, verdict.headers);
}

function reject(reply: FastifyReply, ex: Exchange, code: ErrorCode, detail: string, headers?: Record<string, string>): void {
  reply.hijack();
  answer(reply.raw, ex, code, detail, headers);
}

function answerClientError(err: NodeJS.ErrnoException, socket: Socket, logger: Logger): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
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
