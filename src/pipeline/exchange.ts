import type { CompiledRoute } from '../config/compile.js';
import type { Identity } from '../auth/identity.js';
import type { RateLimitDecision } from '../stores/rate-limit-store.js';

/**
 * What the stages learn about one request as it walks the pipeline. Made once per request in
 * `onRequest` and read on the way out by the access log.
 */
export class Exchange {
  route: CompiledRoute | null = null;
  params: Record<string, string> | null = null;
  /** The canonical path (no query) the gateway matched and authorised. */
  path = '';
  query = '';
  identity: Identity | null = null;
  rateLimit: RateLimitDecision | null = null;
  upstreamOrigin: string | null = null;
  /** The upstream call under way, told when the client's response closes. */
  inFlight: { clientClosed(): void } | null = null;
  /** Why the gateway itself answered, when it did: an error code from errors.ts. */
  errorCode: string | null = null;

  constructor(
    readonly id: string,
    readonly startedAt: number,
    /** The socket peer: the client, or a trusted proxy in front of the gateway. */
    readonly peer: string,
    readonly peerTrusted: boolean,
    readonly clientIp: string,
  ) {}
}
