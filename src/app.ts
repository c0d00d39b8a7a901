import cluster from 'node:cluster';
import { readFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { CompileScope, CompiledConfig, ResolvedRoute } from './config/compile.js';
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
import { contentType } from './pipeline/content-type.js';
import { cors, preflight } from './pipeline/cors.js';
import type { RouteStage, Stage } from './pipeline/exchange.js';
import { finisher } from './pipeline/finish.js';
import { forward } from './pipeline/forward.js';
import { isOwnEndpoint, ownEndpoints } from './pipeline/own-endpoints.js';
import { requestId } from './pipeline/request-id.js';
import { revoke } from './pipeline/revoke.js';
import { shed } from './pipeline/shed.js';
import { routeMatch } from './pipeline/route-match.js';
import { Runner } from './pipeline/run.js';
import { transform } from './pipeline/transform.js';
import { SocketRegistry, websocket } from './pipeline/websocket.js';
import { openResources, type Resources } from './resources.js';
import { createGatewayServer, hstsValue, serverOptions } from './server.js';
import { CertificateWatcher, type TlsMaterial } from './tls.js';
import { compose } from './upstream/call.js';
import { balance } from './upstream/layers/balance.js';
import { breaker } from './upstream/layers/breaker.js';
import { deadline } from './upstream/layers/deadline.js';
import { errorMap } from './upstream/layers/error-map.js';
import { outlier } from './upstream/layers/outlier.js';
import { retry } from './upstream/layers/retry.js';
import { send } from './upstream/layers/send.js';
import { VERSION } from './version.js';
import { routeRows } from './config/route-rows.js';
import { RouteTrends } from './observability/route-trends.js';
import { BACKLOG_SAMPLE_MS, BacklogSamples, ReloadLog, statusData } from './observability/status-page.js';

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
 * Every route's chain is built from these stages, in this order, when the config compiles; a
 * stage the route does not need leaves itself out (a route without roles has no authorize step).
 */
export const ROUTE_CHAIN: ReadonlyArray<RouteStage<ResolvedRoute, StageDeps>> = [shed, authenticate, authorize, accessCheck, contentType, auditGate, authFlow, transform, websocket, forward, revoke];

/**
 * The composition root: wiring only. The request path is the lists below (docs/architecture.md
 * draws it); each stage is one file of pipeline/, each upstream layer one file of upstream/layers/.
 */
export async function buildGateway(config: GatewayConfig, { log: logger, access }: Loggers): Promise<Gateway> {
  const { env } = config;
  let shuttingDown = false;
  const isShuttingDown = () => shuttingDown;
  const r = await openResources(config, logger, isShuttingDown);
  let routes: LiveConfig | null = null;
  const table = () => routes!.current();
  const hsts = hstsValue(env.HSTS_MAX_AGE_SECONDS, r.tls);
  const admit = admission(isShuttingDown);

  // The request path. A request enters by one of two doors: the gateway's own endpoints...
  const ownDoor = [requestId, admit, ownEndpoints({ health: r.health, metrics: r.metrics, version: VERSION, isShuttingDown })];
  // ...or the entry, after which the matched route's chain runs,
  const entry = entryStages(table, hsts, admit);
  // built per route when the config compiles from ROUTE_CHAIN (above);
  // forward's upstream call, from the outermost layer in;
  const upstreamCall = compose([errorMap, breaker, balance, retry, outlier, deadline], send);
  // and on the way out, one exit phase: the access line, metrics, the audit event, the spans.
  const accessLog = new AccessLog(access, env.LOG_SLOW_REQUEST_MS);
  // The status page's trends and logs, kept only when the admin listener that shows them is on.
  const status = env.ADMIN_PORT === 0 ? null : { trends: new RouteTrends(), reloads: new ReloadLog(), backlog: r.audit === null ? null : new BacklogSamples(() => r.audit!.backlogBytes) };
  const finish = finisher({ accessLog, audit: r.audit, metrics: r.metrics, trends: status?.trends ?? null, logger, isShuttingDown, closeIdle: () => http.closeIdleConnections() });

  // Open WebSockets: closed on revocation (on any replica) and at shutdown.
  const sockets = new SocketRegistry(r.accessControl);
  const deps = stageDeps(config, r, upstreamCall, sockets, logger);
  const chainFor = (route: ResolvedRoute, scope: CompileScope): Stage[] => ROUTE_CHAIN.map((s) => s.create(route, { ...deps, ...scope })).filter((s) => s !== null);
  routes = await LiveConfig.create(config.routes, env, r.upstreams, chainFor, () => (shuttingDown ? 'the gateway is shutting down' : null)).catch(async (err: unknown) => {
    await r.close();
    throw err;
  });
  const runner = new Runner(
    { own: ownDoor, isOwn: isOwnEndpoint, entry },
    {
      addresses: new ClientAddress(env.TRUSTED_PROXIES.length > 0 ? trustedProxyList(env.TRUSTED_PROXIES) : null),
      tracing: r.tracing,
      hsts: hsts === null ? null : Object.freeze(['strict-transport-security', hsts]),
      finish,
      logger,
    },
  );
  const http = createGatewayServer(serverOptions(env, r.tls), runner.handle, logger, runner.handleUpgrade);
  const reloads = await watchConfig(config, r, routes.swapIn, http.setSecureContext, logger, status?.reloads ?? null);

  let admin: Server | null = null;
  const gateway: Gateway = {
    server: http.server,
    health: r.health,
    isShuttingDown,
    reload: reloads.reload,
    async close() {
      if (shuttingDown) return;
      shuttingDown = true;
      reloads.close();
      admin?.close();
      // A close frame to every WebSocket first; the server's close does not wait for them.
      sockets.closeAll();
      await http.close();
      accessLog.flush();
      await r.close();
    },
  };
  const statusPage =
    status === null
      ? null
      : (loop: { p50: number; p99: number; max: number }) => {
          const live = routes!;
          return statusData({
            version: VERSION,
            workers: env.WORKERS,
            memoryLimitBytes: r.memoryLimitBytes,
            eventLoopDelayMs: () => loop,
            redis: r.redisState,
            authService: async () => (await r.health.report()).dependencies['auth-service'] ?? 'unknown',
            routes: () => routeRows(live.currentFile(), live.current()),
            services: () => r.upstreams.list(),
            audit: r.audit,
            ...status,
          });
        };
  const sampler = status?.backlog === null || status === null ? null : setInterval(() => status.backlog!.sample(), BACKLOG_SAMPLE_MS);
  sampler?.unref();
  status?.backlog?.sample();
  admin = await openAdmin(env.ADMIN_PORT, r, gateway, logger, statusPage);
  return gateway;
}

/** The entry of every request that is not for the gateway's own endpoints: the matched route's chain runs after it. */
export function entryStages(table: () => CompiledConfig, hsts: string | null, admit: Stage): Stage[] {
  return [requestId, admit, canonicalPath, preflight(table, hsts), routeMatch(table), cors];
}

export type StageDeps = ReturnType<typeof stageDeps> & CompileScope;

/** The login, refresh and logout settings of the environment (auth-flow.ts, revoke.ts). */
export function authFlowSettings(env: GatewayConfig['env']) {
  return {
    maxFailuresPerAccount: env.LOGIN_MAX_FAILURES_PER_ACCOUNT,
    maxFailuresPerIp: env.LOGIN_MAX_FAILURES_PER_IP,
    failureWindowMs: env.LOGIN_FAILURE_WINDOW_SECONDS * 1000,
    maxTokenLifetimeSeconds: env.JWT_EXPIRES_IN,
    clockSkewSeconds: env.JWT_CLOCK_SKEW_SECONDS,
  };
}

/** What the route stages are handed, besides the config they are compiled from. */
function stageDeps(config: GatewayConfig, r: Resources, upstreamCall: ReturnType<typeof compose>, sockets: SocketRegistry, logger: Loggers['log']) {
  const { env } = config;
  return {
    logger,
    verifier: r.verifier,
    authFailures: new AuthFailureLimit(r.accessControl, env.AUTH_FAILURES_PER_ADDRESS_PER_MINUTE, logger),
    accessCheck: new AccessCheck(r.accessControl, r.sessions, logger),
    audit: r.audit,
    store: r.accessControl,
    authFlow: authFlowSettings(env),
    tls: r.tls !== null,
    upstreamCall,
    tracing: r.tracing,
    sockets,
    metrics: r.metrics,
    upstreamCa: r.upstreamCa,
    clockSkewSeconds: env.JWT_CLOCK_SKEW_SECONDS,
    loopLag: r.loopLag,
    shedDelayMs: env.LOAD_SHED_EVENT_LOOP_DELAY_MS,
  };
}

/** What reloads without a restart: the routes file (on change and SIGHUP) and the TLS certificate (on change). */
async function watchConfig(config: GatewayConfig, r: Resources, swapIn: LiveConfig['swapIn'], setSecureContext: (m: TlsMaterial) => void, logger: Loggers['log'], log: ReloadLog | null) {
  const { env } = config;
  const certificates = r.tls === null ? null : new CertificateWatcher(env.TLS_CERT_FILE!, env.TLS_KEY_FILE!, r.tls, setSecureContext, logger);
  certificates?.watch();
  const reloader = new RoutesReloader(config.routesFile, config.source, swapIn, logger, (ok, problems) => {
    r.metrics?.configReload(ok);
    log?.add(ok, problems);
  });
  if (env.ROUTES_WATCH) reloader.watch(await readFile(config.routesFile, 'utf8').catch(() => undefined));
  return {
    async reload(): Promise<ReloadResult> {
      await certificates?.reload();
      return reloader.reload();
    },
    close(): void {
      reloader.close();
      certificates?.close();
    },
  };
}

/** The diagnostics listener on loopback (ADMIN_PORT); workers of WORKERS > 1 take consecutive ports from it. */
async function openAdmin(port: number, r: Resources, gateway: Gateway, logger: Loggers['log'], status: ((loop: { p50: number; p99: number; max: number }) => Promise<unknown>) | null): Promise<Server | null> {
  if (port === 0) return null;
  const adminPort = port + (cluster.isWorker ? Number(process.env.GATEWAY_WORKER_SLOT ?? 0) : 0);
  try {
    return await startAdminListener(adminPort, { version: VERSION, metrics: r.metrics === null ? null : () => r.metrics!.exposition(), services: r.serviceCounts, audit: r.auditState, status }, logger);
  } catch (err) {
    await gateway.close();
    throw new ConfigError([`ADMIN_PORT: cannot listen on 127.0.0.1:${adminPort} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); pick a free port or 0`]);
  }
}
