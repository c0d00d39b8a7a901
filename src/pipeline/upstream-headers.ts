import type { IncomingHttpHeaders } from 'node:http';
import type { Exchange } from './exchange.js';
import { rateLimitHeader } from './rate-limit-policy.js';
import { applyHeaderOps, type HeaderOps } from './route-transform.js';
import { isSpoofable } from './spoofable-headers.js';

/** RFC 9110 7.6.1 connection-specific fields, plus the proxy credentials of this hop. */
const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
  // HTTP/2 refuses it in a message; it only ever belonged to an h2c upgrade.
  'http2-settings',
  // Node has already answered 100-continue on the client hop, and undici refuses to send Expect.
  'expect',
]);


/** Upstream banners that tell an attacker what runs behind the gateway. */
const BANNERS: ReadonlySet<string> = new Set(['server', 'x-powered-by', 'x-aspnet-version', 'x-aspnetmvc-version']);

/** Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1). */
function connectionTokens(value: string | string[] | undefined): Set<string> | null {
  // Nearly every message says just one of these: nothing to parse or allocate.
  if (value === undefined || value === 'keep-alive' || value === 'close' || value === 'Keep-Alive') return null;
  let tokens: Set<string> | null = null;
  for (const part of (Array.isArray(value) ? value.join(',') : value).split(',')) {
    const t = part.trim().toLowerCase();
    if (t !== '' && t !== 'close' && t !== 'keep-alive') (tokens ??= new Set()).add(t);
  }
  return tokens;
}

/**
 * The request headers the upstream receives: the client's, less hop-by-hop fields and every
 * spoofable one (spoofable-headers.ts) but those the route lets pass; plus X-Forwarded-*, the
 * request id and the verified identity.
 */
export function upstreamRequestHeaders(
  ex: Exchange,
  headers: IncomingHttpHeaders,
  tls: boolean,
  preserveHost: boolean,
  ops: HeaderOps | null,
  /** Spoofable names the route lets through from the client (`passHeaders`); null: none. */
  pass: ReadonlySet<string> | null,
): string[] {
  // A flat [name, value, ...] list: cheaper to build than an object keyed by whatever names the
  // client sent, and taken as is by the HTTP client.
  const out: string[] = [];
  const named = connectionTokens(headers.connection);
  for (const name in headers) {
    const value = headers[name];
    // Names with `_` are dropped outright (as nginx does by default): CGI-style upstreams read
    // X-User_ID and X-Forwarded_For as HTTP_X_USER_ID and HTTP_X_FORWARDED_FOR, the very
    // variables the gateway's own headers become.
    // `:method`, `:path`... are HTTP/2's request line, not fields to pass on.
    if (value === undefined || name === 'host' || HOP_BY_HOP.has(name) || name.includes('_') || name.charCodeAt(0) === 58) continue;
    if (isSpoofable(name) && (pass === null || !pass.has(name))) continue;
    if (named !== null && named.has(name)) continue;
    if (typeof value === 'string') out.push(name, value);
    else for (const v of value) out.push(name, v);
  }

  const host = headers.host ?? single(headers[':authority']);
  if (preserveHost && host !== undefined) out.push('host', host);
  const incomingFor = headers['x-forwarded-for'];
  if (ex.peerTrusted && incomingFor !== undefined) {
    const fwdHost = single(headers['x-forwarded-host']) ?? host;
    out.push(
      'x-forwarded-for',
      `${Array.isArray(incomingFor) ? incomingFor.join(', ') : incomingFor}, ${ex.peer}`,
      'x-forwarded-proto',
      single(headers['x-forwarded-proto']) ?? (tls ? 'https' : 'http'),
    );
    if (fwdHost !== undefined) out.push('x-forwarded-host', fwdHost);
  } else {
    out.push('x-forwarded-for', ex.peer, 'x-forwarded-proto', tls ? 'https' : 'http');
    if (host !== undefined) out.push('x-forwarded-host', host);
  }
  out.push('x-request-id', ex.id);

  const who = ex.identity;
  if (who !== null) out.push('x-user-id', who.userId, 'x-user-role', who.role, 'x-phi-access-level', who.phiAccessLevel);
  return ops === null ? out : applyHeaderOps(out, ops, ex);
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** Response fields the gateway writes itself: an upstream's copy is dropped, never doubled. */
const RESPONSE_OWNED: ReadonlySet<string> = new Set(['x-request-id', 'ratelimit', 'ratelimit-policy']);

/** The upstream's response headers as the client receives them, as a flat [name, value, ...] list. */
export function clientResponseHeaders(headers: IncomingHttpHeaders, ex: Exchange, ops: HeaderOps | null): string[] {
  const out: string[] = [];
  const named = connectionTokens(headers.connection);
  const varyOrigin = ex.route!.cors?.varyOrigin === true;
  const hsts = ex.answerHeaders !== null && ex.answerHeaders[0] === 'strict-transport-security';
  let vary: string | null = null;
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || HOP_BY_HOP.has(name) || BANNERS.has(name) || RESPONSE_OWNED.has(name)) continue;
    if (named !== null && named.has(name)) continue;
    // CORS is the gateway's policy: an upstream's own Access-Control-* answer could widen it.
    if (name.charCodeAt(0) === 97 && name.startsWith('access-control-')) continue;
    // Browsers apply the first HSTS field: an upstream's max-age=0 must not undo the gateway's.
    if (hsts && name === 'strict-transport-security') continue;
    if (varyOrigin && name === 'vary') {
      vary = Array.isArray(value) ? value.join(', ') : value;
      continue;
    }
    if (typeof value === 'string') out.push(name, value);
    else for (const v of value) out.push(name, v);
  }
  if (varyOrigin) out.push('vary', vary === null || vary.trim() === '' ? 'Origin' : vary.trim() === '*' ? '*' : `${vary}, Origin`);
  const extra = ex.answerHeaders;
  if (extra !== null) {
    // Vary: Origin is merged above, with the upstream's own Vary.
    for (let i = 0; i < extra.length; i += 2) if (extra[i] !== 'vary') out.push(extra[i]!, extra[i + 1]!);
  }
  out.push('x-request-id', ex.id);
  const limit = ex.rateLimit;
  if (limit !== null) {
    const policy = ex.route!.rateLimit;
    out.push('ratelimit-policy', policy.policyHeader, 'ratelimit', rateLimitHeader(policy.policyName, limit));
  }
  return ops === null ? out : applyHeaderOps(out, ops, ex);
}
