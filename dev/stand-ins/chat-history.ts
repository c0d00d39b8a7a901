import { createServer, type Server, type ServerResponse } from 'node:http';
import { sendJson } from './http-util.js';

const ANSWER = ['Your', ' next', ' appointment', ' is', ' on', ' Tuesday', ' at', ' 10:00', '.'];

/** The assistant's answer as server-sent events, a word every 150 ms, as a language model streams it. */
function streamAnswer(res: ServerResponse, sessionId: string | null): void {
  if (!sessionId) return sendJson(res, 400, { error: 'session_id is required' });
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
  let i = 0;
  const timer = setInterval(() => {
    if (i < ANSWER.length) res.write(`event: token\ndata: ${JSON.stringify({ text: ANSWER[i++] })}\n\n`);
    else {
      clearInterval(timer);
      res.end('event: done\ndata: {}\n\n');
    }
  }, 150);
  res.once('close', () => clearInterval(timer));
}

/**
 * Stand-in for chat-history-service (:8002). GET /api/v1/history?session_id=uuid answers a short
 * conversation for the user the gateway names in X-User-ID (it trusts the gateway's headers, as
 * services behind the gateway do). GET /api/v1/stream?session_id=uuid streams an assistant's
 * answer as server-sent events.
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
    if (req.method === 'GET' && url.pathname === '/api/v1/stream') return streamAnswer(res, url.searchParams.get('session_id'));
    return sendJson(res, 404, { error: 'not_found' });
  });
}
