import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';

/** host, IPv4, [IPv6], optional port: nothing a URL parser could read as a path or userinfo. */
const VALID_HOST = /^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/**
 * Framing that Node's strict parser lets through but RFC 9112 says to refuse, because a
 * proxy and an upstream that read it differently can be made to see different requests.
 * A connection that carried one such request is refused for good: Node may already have parsed
 * the requests queued behind it.
 */
export class FramingGuard {
  private readonly faulty = new WeakSet<Socket>();

  check(raw: IncomingMessage): string | null {
    if (raw.httpVersionMajor === 2) return checkHttp2(raw);
    if (this.faulty.has(raw.socket)) return 'an earlier request on this connection was malformed';
    // RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
    if (raw.httpVersionMinor === 0 && raw.headers['transfer-encoding'] !== undefined) return 'HTTP/1.0 requests cannot use Transfer-Encoding';
    // RFC 9112 3.2: exactly one valid Host line in HTTP/1.1 (Node would keep the first of two).
    let hosts = 0;
    const rawHeaders = raw.rawHeaders;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = rawHeaders[i]!;
      if (name.length === 4 && name.toLowerCase() === 'host') hosts++;
    }
    if (hosts > 1) return 'the request has more than one Host header';
    const host = raw.headers.host;
    if (host === undefined ? raw.httpVersionMinor !== 0 : !VALID_HOST.test(host)) return 'the request needs one valid Host header';
    return null;
  }

  refuseConnection(socket: Socket): void {
    this.faulty.add(socket);
  }
}

/**
 * HTTP/2 frames carry lengths, so there is no body framing to confuse; what is left is the
 * authority (RFC 9113 8.3.1): valid, and equal to Host when a client sends both.
 */
function checkHttp2(raw: IncomingMessage): string | null {
  const authority = raw.headers[':authority'];
  const host = raw.headers.host;
  const name = typeof authority === 'string' ? authority : host;
  if (name === undefined || !VALID_HOST.test(name)) return 'the request needs one valid :authority';
  if (typeof authority === 'string' && host !== undefined && host !== authority) return ':authority and Host differ';
  return null;
}
