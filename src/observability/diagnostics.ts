import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { monitorEventLoopDelay, performance, type IntervalHistogram } from 'node:perf_hooks';
import { pipeline } from 'node:stream/promises';
import { getHeapSnapshot, getHeapSpaceStatistics, getHeapStatistics } from 'node:v8';
import type { Logger } from './logger.js';
import { STATUS_CSP, STATUS_CSS, statusHtml, type StatusData } from './status-page.js';

export interface DiagnosticsSources {
  version: string;
  metrics: (() => Promise<{ contentType: string; body: string }>) | null;
  services: () => Array<{ name: string; healthy: number; total: number }>;
  audit: () => { backlogBytes: number; failing: boolean; problem: string | null } | null;
  /** The status page's data (status-page.ts), given the event-loop delay this listener measures; null: no page. */
  status: ((loop: { p50: number; p99: number; max: number }) => Promise<unknown>) | null;
}

const ADMIN_HOST = '127.0.0.1';

/**
 * The admin listener: the spec's /debug/vars (memory, heap, event loop, handles) and a heap
 * snapshot on demand, on loopback only. A heap snapshot holds whatever is in memory (tokens,
 * PHI in flight), so it is never served on the public port; reach it with `kubectl exec` or
 * `kubectl port-forward`.
 */
export async function startAdminListener(port: number, sources: DiagnosticsSources, logger: Logger): Promise<Server> {
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const allowedHosts = new Set<string>();
  // The status page's delay is of the whole run, not since the last read of /debug/vars.
  const statusLoop = monitorEventLoopDelay({ resolution: 20 });
  statusLoop.enable();
  const loopDelay = () =>
    statusLoop.count === 0 ? { p50: 0, p99: 0, max: 0 } : { p50: statusLoop.percentile(50) / 1e6, p99: statusLoop.percentile(99) / 1e6, max: statusLoop.max / 1e6 };
  const handle = adminHandler(sources, varsReader(sources, loop), allowedHosts, logger, loopDelay);
  const server = createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => {
      logger.error({ err }, 'admin listener failed');
      if (!res.headersSent) send(res, 500, { error: 'internal' });
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, ADMIN_HOST, () => resolve());
  });
  const bound = (server.address() as { port: number }).port;
  for (const name of ['127.0.0.1', 'localhost']) allowedHosts.add(`${name}:${bound}`);
  server.on('close', () => {
    loop.disable();
    statusLoop.disable();
  });
  logger.info({ port: bound, host: ADMIN_HOST }, 'admin listener (diagnostics) on loopback');
  return server;
}

/** The spec's /debug/vars: memory, heap, event loop (since the last read), handles, services, audit. */
function varsReader(sources: DiagnosticsSources, loop: IntervalHistogram): () => Record<string, unknown> {
  let lastUtilization = performance.eventLoopUtilization();
  return () => {
    const utilization = performance.eventLoopUtilization(lastUtilization);
    lastUtilization = performance.eventLoopUtilization();
    const body = {
      service: 'api-gateway',
      version: sources.version,
      pid: process.pid,
      node: process.version,
      uptime_seconds: Math.round(process.uptime()),
      memory: process.memoryUsage(),
      heap: getHeapStatistics(),
      heap_spaces: getHeapSpaceStatistics().map((s) => ({ name: s.space_name, size: s.space_size, used: s.space_used_size, available: s.space_available_size })),
      event_loop: {
        // Right after start the histogram has no sample yet, and its mean is NaN (null in JSON).
        delay_ms: loop.count === 0 ? { p50: 0, p99: 0, max: 0, mean: 0, samples: 0 } : { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6, mean: loop.mean / 1e6, samples: loop.count },
        utilization: utilization.utilization,
      },
      resources: countResources(),
      services: sources.services(),
      audit: sources.audit(),
    };
    loop.reset();
    return body;
  };
}

function adminHandler(sources: DiagnosticsSources, vars: () => Record<string, unknown>, allowedHosts: ReadonlySet<string>, logger: Logger, loopDelay: () => { p50: number; p99: number; max: number }) {
  let snapshotting = false;
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?', 1)[0];
    // A page in a browser on this host could rebind its own name to 127.0.0.1 (DNS rebinding)
    // and read this listener same-origin: only requests addressed to loopback by name are served.
    if (!allowedHosts.has(req.headers.host ?? '')) return send(res, 403, { error: 'the admin listener answers only requests to 127.0.0.1 or localhost' });
    // A heap snapshot is made by an explicit POST, never by a link or a prefetch.
    if (path === '/debug/heap-snapshot' && req.method !== 'POST') return send(res, 405, { error: 'POST /debug/heap-snapshot' });
    if (path !== '/debug/heap-snapshot' && req.method !== 'GET') return send(res, 405, { error: 'method not allowed' });
    if (path === '/debug/vars') return send(res, 200, vars());
    // A browser asks for an icon: none, without an error in its console.
    if (sources.status !== null && path === '/favicon.ico') return void res.writeHead(204, { 'cache-control': 'max-age=86400' }).end();
    if (sources.status !== null && (path === '/status' || path === '/status.json' || path === '/status.css')) {
      const headers = { 'cache-control': 'no-store', 'content-security-policy': STATUS_CSP, 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer' };
      if (path === '/status.css') return void res.writeHead(200, { ...headers, 'content-type': 'text/css; charset=utf-8' }).end(STATUS_CSS);
      const data = (await sources.status(loopDelay())) as StatusData;
      if (path === '/status.json') return void res.writeHead(200, { ...headers, 'content-type': 'application/json' }).end(JSON.stringify(data));
      return void res.writeHead(200, { ...headers, 'content-type': 'text/html; charset=utf-8' }).end(statusHtml(data));
    }
    if (path === '/metrics' && sources.metrics !== null) {
      const { contentType, body } = await sources.metrics();
      res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-store' }).end(body);
      return;
    }
    if (path !== '/debug/heap-snapshot') return send(res, 404, { error: 'not found', endpoints: ['/debug/vars', '/debug/heap-snapshot', '/metrics', ...(sources.status === null ? [] : ['/status', '/status.json'])] });
    // Writing one stops the event loop for a while and doubles the heap for a moment: one at a time.
    if (snapshotting) return send(res, 409, { error: 'a heap snapshot is being written' });
    snapshotting = true;
    logger.warn('writing a heap snapshot on request of the admin listener');
    try {
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-disposition': `attachment; filename="api-gateway-${process.pid}-${Date.now()}.heapsnapshot"`,
        'cache-control': 'no-store',
      });
      await pipeline(getHeapSnapshot(), res);
    } finally {
      snapshotting = false;
    }
  };
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' }).end(text);
}

/** Active handles and requests by kind (sockets, timers...): a leak shows as a count that only grows. */
function countResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) counts[kind] = (counts[kind] ?? 0) + 1;
  return counts;
}
