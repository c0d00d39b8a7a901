import type { IncomingMessage } from 'node:http';
import type { Exchange } from '../pipeline/exchange.js';
import type { Logger } from './logger.js';

/**
 * One line per request with the spec's fields, built from an allow-list: the path is the
 * canonical path without its query (query values may carry PHI), and no header but the
 * user agent is ever copied.
 */
export class AccessLog {
  constructor(
    private readonly logger: Logger,
    private readonly slowMs: number,
  ) {}

  /** `status` is what the client got: 499 when it left before the answer was complete. */
  write(ex: Exchange, req: IncomingMessage, status: number, ms: number, quiet: boolean): void {
    const slow = ms >= this.slowMs;
    const level = slow || status >= 500 ? 'warn' : quiet ? 'debug' : 'info';
    if (!this.logger.isLevelEnabled(level)) return;
    const line = {
      request_id: ex.id,
      user_id: ex.identity?.userId ?? null,
      method: req.method,
      path: ex.path || pathOnly(req.url),
      route: ex.route?.name ?? null,
      status_code: status,
      response_time_ms: Math.round(ms * 100) / 100,
      user_agent: req.headers['user-agent'] ?? null,
      ip_address: ex.clientIp,
      upstream: ex.upstreamOrigin,
      error_code: ex.errorCode,
    };
    this.logger[level](line, slow ? 'slow request' : 'request');
  }
}

function pathOnly(url: string | undefined): string {
  if (url === undefined) return '';
  const q = url.indexOf('?');
  return (q === -1 ? url : url.slice(0, q)).slice(0, 256);
}
