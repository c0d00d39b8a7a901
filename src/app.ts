import cluster from 'node:cluster';
import { readFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { CompileScope, ResolvedRoute } from './config/compile.js';
import { trustedProxyList } from './config/env.js';
import { LiveConfig } from './config/live-config.js';
import type { GatewayConfig } from './config/load.js';
import { RoutesReloader, type ReloadResult } from './config/reload.js';
import { ConfigError } from './errors.js';
import { AccessLog } from './observability/access-log.js';
import { startAdminListener } from './observability/diagnostics.js';
import type { HealthMonitor } from './observability/health.js';
import type { Loggers } from './observability/logger.js';
import { AccessCheck, accessCheck } from './pipeline/access-check.js';
import { admission } from './pipeline/admission.js';
import { auditGate } from './pipeline/audit-gate.js';
import { AuthFailureLimit } from './pipeline/auth-failure-limit.js';
import { authFlow } from './pipeline/auth-flow.js';
import { authenticate } from './pipeline/authenticate.js';
import { authorize } from './pipeline/authorize.js';
import { canonicalPath } from './pipeline/canonical-path.js';
import { ClientAddress } from './pipeline/client-address.js';
import { cors, preflight } from './pipeline/cors.js';
import type { RouteStage, Stage } from './pipeline/exchange.js';
import { finisher } from './pipeline/finish.js';
import { forward } from './pipeline/forward.js';
import { isOwnEndpoint, ownEndpoints } from './pipeline/own-endpoints.js';
import { requestId } from './pipeline/request-id.js';
import { revoke } from './pipeline/revoke.js';
import { routeMatch } from './pipeline/route-match.js';
import { Runner } from './pipeline/run.js';
import { transform } from './pipeline/transform.js';
import { openResources, type Resources } from './resources.js';
import { createGatewayServer } from './server.js';
import { CertificateWatcher } from './tls.js';
import { compose } from './upstream/call.js';
import { balance } from './upstream/layers/balance.js';
import { breaker } from './upstream/layers/breaker.js';
import { deadline } from './upstream/layers/deadline.js';
import { errorMap } from './upstream/layers/error-map.js';
import { outlier } from './upstream/layers/outlier.js';
import { retry } from './upstream/layers/retry.js';
import { send } from './upstream/layers/send.js';
import { VERSION } from './version.js';

export interface Gateway {
  readonly server: Server;
  readonly health: HealthMonitor;
  /** Readiness turns false, new connections are refused, in-flight requests finish. */
  close(): Promise<void>;
  /** Re-reads the routes file and swaps it in, or refuses it and keeps the running one (SIGHUP). */
  reload(): Promise<ReloadResult>;
  isShuttingDown(): boolean;
}

/**
 * The composition root: wiring only. The request path is the lists below (docs/architecture.md);
 * each stage is one file of pipeline/, each upstream layer one file of upstream/layers/.
 */
export async function buildGateway(config: GatewayConfig, { log: logger, access }: Loggers): Promise<Gateway> {
  const { env } = config;
  let shuttingDown = false;
  const isShuttingDown = () => shuttingDown;
  const r = await openResources(config, logger, isShuttingDown);

  // The upstream call, from the outermost layer in.
  const upstreamCall = compose([errorMap, breaker, balance, retry, outlier, deadline], send);

  // Every route's chain, in this order; a stage the route does not need leaves itself out.
  const ROUTE_CHAIN: ReadonlyArray<RouteStage<ResolvedRoute, StageDeps>> = [authenticate, authorize, accessCheck, auditGate, authFlow, transform, forward, revoke];

  const deps = stageDeps(config, r, upstreamCall, logger);
  const chainFor = (route: ResolvedRoute, scope: CompileScope): Stage[] => ROUTE_CHAIN.map((s) => s.create(route, { ...deps, ...scope })).filter((s) => s !== null);
  const routes = await LiveConfig.create(config.routes, env, r.upstreams, chainFor, () => (shuttingDown ? 'the gateway is shutting down' : null)).catch(async (err: unknown) => {
    await r.close();
    throw err;
  });

  const accessLog = new AccessLog(access, env.LOG_SLOW_REQUEST_MS);
  const hsts = r.tls !== null && env.HSTS_MAX_AGE_SECONDS > 0 ? `max-age=${env.HSTS_MAX_AGE_SECONDS}; includeSubDomains` : null;
  const runner = new Runner(
    {
      own: [requestId, admission(isShuttingDown), ownEndpoints({ health: r.health, metrics: r.metrics, version: VERSION, isShuttingDown })],
      isOwn: isOwnEndpoint,
      entry: [requestId, admission(isShuttingDown), canonicalPath, preflight(routes.current, hsts), routeMatch(routes.current), cors],
    },
    {
      addresses: new ClientAddress(env.TRUSTED_PROXIES.length > 0 ? trustedProxyList(env.TRUSTED_PROXIES) : null),
      tracing: r.tracing,
      hsts: hsts === null ? null : Object.freeze(['strict-transport-security', hsts]),
      finish: finisher({ accessLog, audit: r.audit, metrics: r.metrics, logger, isShuttingDown, closeIdle: () => http.closeIdleConnections() }),
      logger,
    },
  );

  const http = createGatewayServer(
    { tls: r.tls, http2: env.HTTP2_ENABLED, maxHeaderBytes: env.MAX_HEADER_BYTES, keepAliveTimeoutMs: env.KEEP_ALIVE_TIMEOUT_MS, requestTimeoutMs: env.CLIENT_REQUEST_TIMEOUT_MS, headersTimeoutMs: env.CLIENT_HEADERS_TIMEOUT_MS },
    runner.handle,
    logger,
  );
  const certificates = r.tls === null ? null : new CertificateWatcher(env.TLS_CERT_FILE!, env.TLS_KEY_FILE!, r.tls, http.setSecureContext, logger);
  certificates?.watch();
  const reloader = new RoutesReloader(config.routesFile, config.source, routes.swapIn, logger, (ok) => r.metrics?.configReload(ok));
  if (env.ROUTES_WATCH) reloader.watch(await readFile(config.routesFile, 'utf8').catch(() => undefined));

  let admin: Server | null = null;
  const gateway: Gateway = {
    server: http.server,
    health: r.health,
    isShuttingDown,
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
      await http.close();
      accessLog.flush();
      await r.close();
    },
  };
  admin = await openAdmin(env.ADMIN_PORT, r, gateway, logger);
  return gateway;
}

type StageDeps = ReturnType<typeof stageDeps> & CompileScope;

/** What the route stages are handed, besides the config they are compiled from. */
function stageDeps(config: GatewayConfig, r: Resources, upstreamCall: ReturnType<typeof compose>, logger: Loggers['log']) {
  const { env } = config;
  return {
    logger,
    verifier: r.verifier,
    authFailures: new AuthFailureLimit(r.accessControl, env.RATE_LIMIT_PER_MINUTE, logger),
    accessCheck: new AccessCheck(r.accessControl, r.sessions, logger),
    audit: r.audit,
    store: r.accessControl,
    authFlow: {
      maxFailuresPerAccount: env.LOGIN_MAX_FAILURES_PER_ACCOUNT,
      maxFailuresPerIp: env.LOGIN_MAX_FAILURES_PER_IP,
      failureWindowMs: env.LOGIN_FAILURE_WINDOW_SECONDS * 1000,
      maxTokenLifetimeSeconds: env.JWT_EXPIRES_IN,
      clockSkewSeconds: env.JWT_CLOCK_SKEW_SECONDS,
    },
    tls: r.tls !== null,
    upstreamCall,
    tracing: r.tracing,
  };
}

/** The diagnostics listener on loopback (ADMIN_PORT); workers of WORKERS > 1 take consecutive ports from it. */
async function openAdmin(port: number, r: Resources, gateway: Gateway, logger: Loggers['log']): Promise<Server | null> {
  if (port === 0) return null;
  const adminPort = port + (cluster.isWorker ? Number(process.env.GATEWAY_WORKER_SLOT ?? 0) : 0);
  try {
    return await startAdminListener(adminPort, { version: VERSION, metrics: r.metrics === null ? null : () => r.metrics!.exposition(), services: r.serviceCounts, audit: r.auditState }, logger);
  } catch (err) {
    await gateway.close();
    throw new ConfigError([`ADMIN_PORT: cannot listen on 127.0.0.1:${adminPort} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); pick a free port or 0`]);
  }
}
