import type { BlockList } from 'node:net';
import { isIP, isIPv4 } from 'node:net';

function plain(address: string | undefined): string {
  if (address === undefined) return '';
  return address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address;
}

function family(ip: string): 'ipv4' | 'ipv6' {
  return isIPv4(ip) ? 'ipv4' : 'ipv6';
}

/**
 * The client address is the socket peer, unless the peer is a configured trusted proxy: then
 * X-Forwarded-For is read from the right, skipping trusted hops, and the first untrusted hop is
 * the client. A client can therefore never choose its own address by sending a header.
 */
export class ClientAddress {
  constructor(private readonly trusted: BlockList | null) {}

  peer(remoteAddress: string | undefined): string {
    return plain(remoteAddress);
  }

  isTrusted(peer: string): boolean {
    return this.trusted !== null && peer !== '' && this.trusted.check(peer, family(peer));
  }

  clientIp(peer: string, forwardedFor: string | string[] | undefined): string {
    if (!this.isTrusted(peer) || forwardedFor === undefined) return peer;
    const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor).split(',');
    let nearest = peer;
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = plain(hops[i]!.trim());
      // A hop that is not an address was not written by a proxy we trust: stop at the last one that was.
      if (isIP(hop) === 0) return nearest;
      if (!this.isTrusted(hop)) return hop;
      nearest = hop;
    }
    return nearest;
  }
}
