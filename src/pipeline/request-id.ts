import { randomUUID } from 'node:crypto';
import { PASS, stage } from './exchange.js';

const WELL_FORMED = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/**
 * A client's X-Request-ID is kept when it is short and made of safe characters, so that a trace
 * can start at the client; anything else (log injection, huge values, lists) is replaced.
 */
export function requestIdFrom(header: string | string[] | undefined): string {
  if (typeof header === 'string' && WELL_FORMED.test(header)) return header;
  return randomUUID();
}

/** Stage: the request's id, first of all, so that every answer and line carries it. */
export const requestId = stage('request-id', (ex, req) => {
  ex.id = requestIdFrom(req.headers['x-request-id']);
  return PASS;
});
