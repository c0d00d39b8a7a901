import type { ServerResponse } from 'node:http';
import type { HealthMonitor } from '../observability/health.js';
import type { Metrics } from '../observability/metrics.js';
import { ANSWERED, stage, type Exchange, type Refusal, type Stage } from './exchange.js';

/** Paths the gateway answers itself; a route may not take them over. */
export const RESERVED_PATHS = ['/health', '/health/live', '/health/ready', '/metrics'] as const;

const OWN: ReadonlySet<string> = new Set(RESERVED_PATHS);

function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

/** An own endpoint, matched on the path before the query; everything else is proxied. */
export function isOwnEndpoint(url: string): boolean {
  return OWN.has(pathOf(url));
}

export interface OwnEndpointDeps {
  readonly health: HealthMonitor;
  readonly metrics: Metrics | null;
  readonly version: string;
  readonly isShuttingDown: () => boolean;
}

const NOT_GET: Refusal = Object.freeze({ code: 'GW_METHOD_NOT_ALLOWED', detail: 'the gateway answers GET here', headers: { allow: 'GET, HEAD' } });
const METRICS_OFF: Refusal = Object.freeze({ code: 'GW_ROUTE_NOT_FOUND', detail: 'metrics are disabled (ENABLE_METRICS=false)' });
const JSON_TYPE = 'application/json; charset=utf-8';

function send(ex: Exchange, res: ServerResponse, status: number, type: string, body: string): typeof ANSWERED {
  const fields: Record<string, string | number> = { 'content-type': type, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' };
  const extra = ex.answerHeaders;
  if (extra !== null) for (let i = 0; i < extra.length; i += 2) fields[extra[i]!] = extra[i + 1]!;
  res.writeHead(status, fields);
  res.end(res.req.method === 'HEAD' ? undefined : body);
  return ANSWERED;
}

/**
 * Stage, the last of the own endpoints' door: /health (the spec's report), /health/ready (also 503
 * while shutting down), /health/live (the process answers) and /metrics, by GET or HEAD. They
 * take no body: whatever a client sends is never parsed or buffered.
 */
export function ownEndpoints({ health, metrics, version, isShuttingDown }: OwnEndpointDeps): Stage {
  const live = JSON.stringify({ status: 'alive', service: 'api-gateway', version });
  const report = async (ex: Exchange, res: ServerResponse, ready: boolean) => {
    // The spec's fields only: why a check failed is for operators (the log), not for anyone who
    // can reach an unauthenticated endpoint.
    const { checks: _checks, ...result } = await health.report();
    const ok = ready ? !isShuttingDown() && result.status !== 'unhealthy' : result.status !== 'unhealthy';
    return send(ex, res, ok ? 200 : 503, JSON_TYPE, JSON.stringify(result));
  };
  return stage('own-endpoints', async (ex, req, res) => {
    const path = pathOf(req.url!);
    if (path === '/metrics' && metrics === null) return METRICS_OFF;
    if (req.method !== 'GET' && req.method !== 'HEAD') return NOT_GET;
    ex.label = path;
    if (path === '/health/live') return send(ex, res, 200, JSON_TYPE, live);
    if (path === '/metrics') {
      const { contentType, body } = await metrics!.exposition();
      return send(ex, res, 200, contentType, body);
    }
    return report(ex, res, path === '/health/ready');
  });
}
