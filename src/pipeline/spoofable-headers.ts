/**
 * Request headers that upstream frameworks believe about the client or the request, and that
 * only a proxy may write: the one list of what a client's request may never carry upstream.
 * The gateway writes X-Forwarded-For, -Proto and -Host, X-Request-ID and the identity headers
 * itself (upstream-headers.ts); the client's copies of every name below are dropped.
 */

/** Exact names: the client's address, the original URL, host or method, and the forwarding record. */
export const SPOOFABLE_HEADERS: readonly string[] = [
  // the client's address, as CDNs and load balancers report it
  'forwarded',
  'x-real-ip',
  'true-client-ip',
  'x-client-ip',
  'x-cluster-client-ip',
  'cf-connecting-ip',
  'fastly-client-ip',
  'x-originating-ip',
  'x-remote-ip',
  'x-remote-addr',
  // the original URL or host, read by frameworks that route on them
  'x-original-url',
  'x-rewrite-url',
  'x-original-uri',
  'x-original-host',
  'x-host',
  // the method, read by frameworks that let a POST act as another method
  'x-http-method-override',
  'x-method-override',
  'x-http-method',
  // the gateway's own
  'x-request-id',
];

/** Name prefixes: every X-Forwarded-* (-For, -Proto, -Host, -Port, -Prefix, -Server, -Ssl...), and the identity headers. */
export const SPOOFABLE_PREFIXES: readonly string[] = ['x-forwarded-', 'x-user-', 'x-phi-'];

const EXACT: ReadonlySet<string> = new Set(SPOOFABLE_HEADERS);

/** A lower-case header name a client's request may not carry upstream. */
export function isSpoofable(name: string): boolean {
  if (EXACT.has(name)) return true;
  // Most names start with another letter than x: one comparison.
  if (name.charCodeAt(0) !== 120 /* x */) return false;
  for (const prefix of SPOOFABLE_PREFIXES) if (name.startsWith(prefix)) return true;
  return false;
}

/** Names a route may let through from the client (`passHeaders`): the list above, less the gateway's own and the identity headers. */
export function mayPass(name: string): boolean {
  const n = name.toLowerCase();
  return isSpoofable(n) && !n.startsWith('x-user-') && !n.startsWith('x-phi-') && n !== 'x-request-id' && n !== 'x-forwarded-for' && n !== 'x-forwarded-proto' && n !== 'x-forwarded-host' && n !== 'forwarded';
}
