import { createServer, type Server } from 'node:http';
import { sendJson } from './http-util.js';

/**
 * Stand-in for chat-history-service (:8002). GET /api/v1/history?session_id=uuid answers a short
 * conversation for the user the gateway names in X-User-ID (it trusts the gateway's headers, as
 * services behind the gateway do).
 */
export function createChatHistoryStandIn(): Server {
  return createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://chat-history');
    if (req.method === 'GET' && url.pathname === '/health') return sendJson(res, 200, { status: 'healthy', service: 'chat-history' });
    if ((req.method === 'GET' || req.method === 'HEAD') && url.pathname === '/api/v1/history') {
      const sessionId = url.searchParams.get('session_id');
      if (!sessionId) return sendJson(res, 400, { error: 'session_id is required' });
      return sendJson(res, 200, {
        session_id: sessionId,
        user_id: req.headers['x-user-id'] ?? null,
        role: req.headers['x-user-role'] ?? null,
        request_id: req.headers['x-request-id'] ?? null,
        messages: [
          { role: 'user', content: 'When is my next appointment?', at: '2025-09-01T09:00:00Z' },
          { role: 'assistant', content: 'Your next appointment is on Tuesday at 10:00.', at: '2025-09-01T09:00:02Z' },
        ],
      });
    }
    return sendJson(res, 404, { error: 'not_found' });
  });
}
