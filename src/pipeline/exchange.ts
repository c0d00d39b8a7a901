import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Span } from '@opentelemetry/api';
import type { Identity } from '../auth/identity.js';
import type { ErrorCode } from '../errors.js';
import type { RateLimitDecision } from '../stores/rate-limit-store.js';
import type { UpstreamCall } from '../upstream/call.js';
import type { UpstreamService } from '../upstream/service.js';
import type { AccessRecord, SocketClose } from '../audit/audit-trail.js';
import type { CorsPolicy } from './cors-policy.js';
import type { RateLimitPolicy } from './rate-limit-policy.js';

/**
 * The stage contract. A stage is one file of this folder; the runner (run.ts) drives a list of
 * them. A handler reads the request and the exchange, writes only its own fields of the exchange
 * (each field below names its writer), and returns its verdict: PASS, a Refusal, or ANSWERED. It
 * returns a promise only when it waits on I/O, so a request that needs none runs through the
 * whole chain synchronously.
 */

/** What an upgrade request brings besides the request: the raw socket, and the bytes read past its head. */
export interface UpgradeContext {
  readonly socket: Duplex;
  readonly head: Buffer;
  /** The client offered its token as a subprotocol (websocket.ts, bearerFromProtocols). */
  readonly bearer: boolean;
}

/** A refusal: the runner answers with this code's problem (errors.ts) and the chain stops. */
export interface Refusal {
  readonly code: ErrorCode;
  readonly detail: string;
  readonly headers?: Readonly<Record<string, string>>;
  /** What the exit phase counts it as: an authentication failure or a rate limit hit (metrics.ts). */
  readonly counts?: 'auth-failure' | 'rate-limited';
}

/** The stage answered the client itself (a preflight, a proxied answer under way): the chain ends. */
export const ANSWERED = 'answered';

/** Go on to the next stage. */
export const PASS = undefined;

export type Verdict = Refusal | typeof ANSWERED | typeof PASS;

export type Handler = (ex: Exchange, req: IncomingMessage, res: ServerResponse) => Verdict | Promise<Verdict>;

export interface Stage {
  readonly name: string;
  /** Traced stages get a span of their own (the ones that can wait on I/O): `name` is its name. */
  readonly traced: boolean;
  readonly handle: Handler;
}

export function stage(name: string, handle: Handler, traced = false): Stage {
  return Object.freeze({ name, traced, handle });
}

/**
 * A stage of the route chains: `create` is called once per route when the config compiles, and
 * returns the route's handler, or null when the route does not need the stage (a route without
 * roles has no authorize step). `Config` is the stage's slice of a route in the routes file.
 */
export interface RouteStage<Config, Deps> {
  readonly name: string;
  create(route: Config, deps: Deps): Stage | null;
}

/** What the exchange, the exit phase and the runner know of a route: its chain and its labels. */
export interface Route {
  readonly name: string;
  /** The route as declared (`/api/v1/patients/:id`, `/api/v1/files/*`): the metrics and audit label. */
  readonly template: string;
  readonly auth: 'required' | 'public';
  readonly phi: boolean;
  /** Query parameters the access log may show; null: none. */
  readonly logQuery: ReadonlySet<string> | null;
  /** Null: the route takes no cross-origin requests (`cors: false`). */
  readonly cors: CorsPolicy | null;
  /** The budget it draws from (access-check), named in the RateLimit headers of its answers. */
  readonly rateLimit: RateLimitPolicy;
  /** The route's stages after the entry, in order; the last one answers. */
  readonly chain: readonly Stage[];
}

/**
 * What the stages learn about one request as it walks the path. Opened by the runner, read on
 * the way out by the exit phase (finish.ts).
 */
export class Exchange {
  // Written by route-match (or by the preflight stage, for the log).
  route: Route | null = null;
  params: Record<string, string> | null = null;
  /** route-match: the 404/405 to answer when no route matched. */
  miss: Refusal | null = null;
  /** route-match: the CORS policy of the answer (the route's, or CORS_* for unmatched paths). */
  cors: CorsPolicy | null = null;
  /** canonical-path: the path (no query) the gateway matches and authorises, and the raw query. */
  path = '';
  query = '';
  /** preflight: a CORS preflight the gateway answered itself (no audit event). */
  preflight = false;
  /** authenticate: the verified caller. */
  identity: Identity | null = null;
  /** authorize: the reason an admin gave for break-glass access, on a route that allows it. */
  breakGlass: string | null = null;
  /** access-check: the rate-limit decision (RateLimit headers on the answer). */
  rateLimit: RateLimitDecision | null = null;
  /** shed: the service whose door let this request in; its place is held until forward calls it, or the exchange ends. */
  entered: UpstreamService | null = null;
  /** audit-gate: a PHI request let in while the audit spool had room: its event may use the headroom. */
  auditAdmitted = false;
  /** audit-gate: the write-ahead access record; the answer's head waits until it is durable. */
  accessRecord: AccessRecord | null = null;
  /** forward, websocket: how long the answer waited for the access record to be durable (ms), once known. */
  auditWaitMs = -1;
  /** auth-flow: the validated body the gateway sends instead of the client's (login, refresh, logout). */
  body: Buffer | null = null;
  /** auth-flow: runs on the way out (a login gives its counted attempt back here). */
  after: ((ex: Exchange) => void) | null = null;
  /** transform: the headers and the target (path and query) the upstream receives. */
  upstreamHeaders: string[] | null = null;
  upstreamTarget = '';
  /** transform: the upstream's answer headers as the client receives them; mapErrors. */
  responseHeaders: ((headers: Record<string, string | string[] | undefined>, ex: Exchange) => string[]) | null = null;
  mapErrors = false;
  /** forward: the upstream call, and its answer's status once its head arrived. */
  upstream: UpstreamCall | null = null;
  upstreamStatus = 0;
  /** forward: bytes of the upstream's answer body passed to the client. */
  bytesOut = 0;
  /** forward: told when the client's response closes. */
  inFlight: { clientClosed(): void } | null = null;
  /** forward: why an upstream try failed (an errno or undici code), when the gateway answered for it. */
  upstreamFailure: string | null = null;
  /** forward: the upstream call's span. */
  upstreamSpan: Span | null = null;
  /** websocket: the socket was handed to the WebSocket (the exit phase waits for its close). */
  webSocketOpen = false;
  /** websocket: how the WebSocket ended, for the exit phase. */
  webSocket: SocketClose | null = null;
  /** own-endpoints: the metrics and log label of the gateway's own endpoint that answered. */
  label: string | null = null;
  // Written by the runner.
  /** An upgrade request: its raw socket and the bytes read past its head. */
  upgrade: UpgradeContext | null = null;
  /** An upgrade request: runs the exit phase (a WebSocket's, when it closes). */
  closeExchange: (() => void) | null = null;
  /** The server span (tracing on), and the span of the traced stage under way. */
  span: Span | null = null;
  stageSpan: Span | null = null;
  /** For the access log: the trace this request belongs to, when known. */
  traceId: string | null = null;
  /**
   * Fields every answer to this request carries, proxied or the gateway's own, as
   * [name, value, ...]: HSTS (runner), then CORS for an allowed origin and Vary: Origin (cors).
   * Kept here rather than set on the response, so that an upstream's repeated fields
   * (Set-Cookie) are never merged away.
   */
  answerHeaders: readonly string[] | null = null;
  /** Why the gateway itself answered, when it did: an error code from errors.ts. */
  errorCode: ErrorCode | null = null;
  /** The refusal that ended the chain, for the exit phase's counters. */
  refusal: Refusal | null = null;

  constructor(
    /** request-id: a client's well-formed X-Request-ID, or a new one. */
    public id: string,
    readonly startedAt: number,
    /** The socket peer: the client, or a trusted proxy in front of the gateway. */
    readonly peer: string,
    readonly peerTrusted: boolean,
    readonly clientIp: string,
  ) {}

  /** The instance the upstream call tried last, if any. */
  get upstreamOrigin(): string | null {
    return this.upstream?.instance?.origin ?? null;
  }

  /** Tries at other instances after the first. */
  get retries(): number {
    return this.upstream?.retries ?? 0;
  }

  /** Gives back the place the service's door held for this request (forward, as it calls; the exit phase, if it never did). */
  leaveDoor(): void {
    if (this.entered !== null) {
      this.entered.entering--;
      this.entered = null;
    }
  }
}
