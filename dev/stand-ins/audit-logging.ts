import { createServer, type Server } from 'node:http';
import { readJson, sendJson } from './http-util.js';

export interface AuditStandIn {
  server: Server;
  /** Events received, in arrival order (duplicates kept: delivery is at-least-once). */
  events: unknown[];
}

/**
 * Stand-in for audit-logging-service (:8084): POST /api/v1/audit/events takes a batch
 * `{ "events": [...] }` and answers 202; GET lists what it holds.
 */
export function createAuditStandIn(): AuditStandIn {
  const events: unknown[] = [];
  const server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://audit-logging');
      if (req.method === 'GET' && url.pathname === '/health') return sendJson(res, 200, { status: 'healthy', service: 'audit-logging' });
      if (url.pathname === '/api/v1/audit/events') {
        if (req.method === 'GET') return sendJson(res, 200, { count: events.length, events: events.slice(-100) });
        if (req.method === 'POST') {
          const body = (await readJson(req, 16 * 1024 * 1024)) as { events?: unknown } | null;
          if (!body || !Array.isArray(body.events)) return sendJson(res, 400, { error: 'expected { "events": [...] }' });
          events.push(...body.events);
          return sendJson(res, 202, { accepted: body.events.length });
        }
      }
      return sendJson(res, 404, { error: 'not_found' });
    })().catch(() => sendJson(res, 500, { error: 'internal' }));
  });
  return { server, events };
}
