import type { Span } from '@opentelemetry/api';
import type { CompiledRoute } from '../config/compile.js';
import type { PermissionMatrix } from '../auth/permissions.js';
import type { Identity } from '../auth/identity.js';
import type { RateLimitDecision } from '../stores/rate-limit-store.js';

/**
 * What the stages learn about one request as it walks the pipeline. Made once per request in
 * `onRequest` and read on the way out by the access log.
 */
export class Exchange {
  route: CompiledRoute | null = null;
  /** The permissions of the config the route came from: a reload mid-request never mixes two configs. */
  permissions: PermissionMatrix | null = null;
  params: Record<string, string> | null = null;
  /** The canonical path (no query) the gateway matched and authorised. */
  path = '';
  query = '';
  identity: Identity | null = null;
  rateLimit: RateLimitDecision | null = null;
  /** The reason an admin gave for break-glass access; set only when the route allowed it. */
  breakGlass: string | null = null;
  /** Runs once the upstream exchange is over (a login flow counts failures here). */
  after: ((ex: Exchange) => void) | null = null;
  /** The upstream's status, once its response head arrived. */
  upstreamStatus = 0;
  /** The instance that answered (or was tried last). */
  upstreamOrigin: string | null = null;
  /** With tracing: the server span, the stage span under way, the upstream call's span. */
  span: Span | null = null;
  stageSpan: Span | null = null;
  upstreamSpan: Span | null = null;
  /** For the access log: the trace this request belongs to, when known. */
  traceId: string | null = null;
  /** A PHI request let through while the audit spool had room: its event may use the spool's headroom. */
  auditAdmitted = false;
  /** A CORS preflight the gateway answered itself: no audit event. */
  preflight = false;
  /** Tries at other instances after the first. */
  retries = 0;
  /** The upstream call under way, told when the client's response closes. */
  inFlight: { clientClosed(): void } | null = null;
  /**
   * Fields every answer to this request carries, proxied or the gateway's own, as
   * [name, value, ...]: CORS for an allowed origin, Vary: Origin, HSTS. Kept here rather than set
   * on the response, so that an upstream's repeated fields (Set-Cookie) are never merged away.
   */
  answerHeaders: readonly string[] | null = null;
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
