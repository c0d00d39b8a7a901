import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AuditTrail } from '../audit/audit-trail.js';
import type { AccessLog } from '../observability/access-log.js';
import type { Logger } from '../observability/logger.js';
import { UNMATCHED_PATH, type Metrics } from '../observability/metrics.js';
import type { RouteTrends } from '../observability/route-trends.js';
import { Tracing } from '../observability/tracing.js';
import type { Exchange } from './exchange.js';

export interface FinishDeps {
  readonly accessLog: AccessLog;
  readonly audit: AuditTrail | null;
  readonly metrics: Metrics | null;
  readonly logger: Logger;
  readonly isShuttingDown: () => boolean;
  /** Per-route rate, errors and p95 of the last minutes, for the status page. */
  readonly trends: RouteTrends | null;
  /** Ends the kept-alive connections that are idle now (during shutdown). */
  readonly closeIdle: () => void;
}

/** Ends the exchange's spans: the upstream call's, a stage's cut short, and the server span. */
function endSpans(ex: Exchange, status: number): void {
  if (ex.stageSpan !== null) {
    ex.stageSpan.end();
    ex.stageSpan = null;
  }
  const upstream = ex.upstreamSpan;
  if (upstream !== null) {
    const origin = ex.upstreamOrigin;
    if (origin !== null) Tracing.setServer(upstream, origin);
    if (ex.retries > 0) upstream.setAttribute('gateway.retries', ex.retries);
    Tracing.endWithStatus(upstream, ex.upstreamStatus, ex.upstreamStatus === 0 ? ex.errorCode : null);
  }
  Tracing.endWithStatus(ex.span!, status, ex.errorCode);
}

/**
 * The exit phase, once per exchange, when its response closes (answered, failed, or the client
 * left): the access line, the metrics, the audit event and the spans end here, in one place,
 * labelled by the route template (never the raw path). `status` is what the client got: 499 when
 * it left before the answer was complete.
 */
export function finisher({ accessLog, audit, metrics, trends, logger, isShuttingDown, closeIdle }: FinishDeps): (ex: Exchange, req: IncomingMessage, res: ServerResponse) => void {
  return (ex, req, res) => {
    ex.inFlight?.clientClosed();
    ex.leaveDoor();
    ex.after?.(ex);
    const ms = performance.now() - ex.startedAt;
    // A WebSocket's exchange ends when the socket closes: 101, and its duration is the socket's.
    const status = ex.webSocket !== null ? 101 : res.writableFinished ? res.statusCode : 499;
    const label = ex.label ?? (ex.route !== null ? ex.route.template : UNMATCHED_PATH);
    accessLog.write(ex, req, status, ms, label.startsWith('/health'));
    if (audit !== null && ex.route !== null && ex.route.auth === 'required' && !ex.preflight) {
      if (ex.webSocket !== null) audit.recordSocket(ex, 'close', ex.webSocket);
      else audit.record(ex, req.method!, status, ms);
      if (ex.auditWaitMs >= 0) audit.waited(ex.auditWaitMs / 1000);
    }
    if (ex.span !== null) endSpans(ex, status);
    if (trends !== null && ex.route !== null && !ex.preflight) trends.record(ex.route.template, status, ms / 1000);
    if (metrics !== null) {
      metrics.request(req.method!, label, status, ms / 1000);
      const counts = ex.refusal?.counts;
      if (counts === 'auth-failure') metrics.authFailure(ex.refusal!.code);
      else if (counts === 'rate-limited') metrics.rateLimitExceeded(ex.identity?.userId ?? ex.clientIp);
    }
    // The gateway's own refusals are in the access line; this is for upstream failures.
    if (ex.upstreamFailure !== null) {
      logger.warn({ request_id: ex.id, route: ex.route?.name, upstream: ex.upstreamOrigin, error_code: ex.errorCode, cause: ex.upstreamFailure }, 'upstream request failed');
    }
    // Closing the server ends only the connections idle at that moment; a kept-alive connection
    // whose request was in flight becomes idle now, and must not hold the shutdown open.
    if (isShuttingDown()) setImmediate(closeIdle);
  };
}
