import { corsHeaders, preflight as preflightAnswer, PREFLIGHT_VARY } from './cors-policy.js';
import { ANSWERED, PASS, stage, type Refusal, type Stage } from './exchange.js';
import type { RouteTable } from './route-match.js';

const NO_ROUTE: Refusal = Object.freeze({ code: 'GW_ROUTE_NOT_FOUND', detail: 'no route matches this path', headers: { vary: PREFLIGHT_VARY } });

/**
 * Stage: a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) is the
 * gateway's to answer: no token (browsers send none), never forwarded. It is matched against the
 * route the real request will take: the announced method, and header conditions met by the
 * announced header names.
 */
export function preflight(table: () => RouteTable, hsts: string | null): Stage {
  return stage('preflight', (ex, req, res) => {
    const origin = req.headers.origin;
    const requested = req.headers['access-control-request-method'];
    if (origin === undefined || req.method !== 'OPTIONS' || requested === undefined) return PASS;
    const method = String(requested).trim().toUpperCase();
    const announced = new Set((req.headers['access-control-request-headers'] ?? '').split(',').map((h) => h.trim().toLowerCase()));
    const match = table().router.match(method, ex.path, req.headers, announced);
    if (match.kind === 'not-found') return NO_ROUTE;
    ex.preflight = true;
    if (match.kind === 'method-not-allowed') return { code: 'GW_CORS_REJECTED', detail: `preflight refused: this route accepts ${match.allow}`, headers: { vary: PREFLIGHT_VARY } };
    ex.route = match.route;
    const verdict = preflightAnswer(match.route.cors, origin, method, req.headers);
    if (!verdict.ok) return { code: 'GW_CORS_REJECTED', detail: `preflight refused: ${verdict.detail}`, headers: { vary: PREFLIGHT_VARY } };
    const fields: Record<string, string> = { ...verdict.headers, 'x-request-id': ex.id, 'content-length': '0' };
    if (hsts !== null) fields['strict-transport-security'] = hsts;
    res.writeHead(204, fields);
    res.end();
    return ANSWERED;
  });
}

/**
 * Stage: every answer from here on, proxied or the gateway's own, carries the CORS fields of
 * the policy route-match chose: the grant for an allowed origin, and Vary: Origin whenever the
 * answer depends on the origin. A disallowed origin gets no grant: the browser keeps the answer
 * from the page.
 */
export const cors = stage('cors', (ex, req) => {
  const policy = ex.cors;
  const origin = req.headers.origin;
  if (policy !== null && (origin !== undefined || policy.varyOrigin)) ex.answerHeaders = corsHeaders(policy, origin, ex.answerHeaders);
  return PASS;
});
