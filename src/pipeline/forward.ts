import type { IncomingMessage } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import { SpanKind } from '@opentelemetry/api';
import { z } from 'zod';
import type { Tracing } from '../observability/tracing.js';
import { ms } from '../schema-fields.js';
import { UpstreamCall, type UpstreamBody, type UpstreamDispatch, type UpstreamSettings } from '../upstream/call.js';
import { BodyTimeout, BodyTooLarge } from '../upstream/failures.js';
import { poolSettings } from '../upstream/instance.js';
import type { ServiceConfig } from '../upstream/service-schema.js';
import type { UpstreamService } from '../upstream/service.js';
import { ANSWERED, stage, type Exchange, type RouteStage } from './exchange.js';
import { ProxyResponse } from './proxy-response.js';
import { hasBody } from './read-body.js';

/** The routes-file slice: which service answers, and the limits of the exchange with it. */
export const forwardSchema = {
  /** Absent only for routes the gateway answers itself (action: revoke). */
  service: z.string().optional(),
  /** Upstream response-head deadline, all tries included (504 after). */
  timeoutMs: ms('timeoutMs').default(15_000),
  /** Overrides the service's. */
  connectTimeoutMs: ms('connectTimeoutMs').optional(),
  /** Overrides MAX_BODY_BYTES. */
  maxBodyBytes: z.number().int().min(0).max(2 ** 40).optional(),
  /** Overrides CLIENT_BODY_TIMEOUT_MS: how long a body the gateway reads may take, and an upload may pause. */
  bodyTimeoutMs: ms('bodyTimeoutMs').optional(),
  /**
   * How long the upstream's answer may go quiet once its head arrived (a server-sent event stream:
   * the longest gap between events); the stream itself may run as long as it sends. Default: the
   * longer of 30 s and timeoutMs.
   */
  streamIdleTimeoutMs: ms('streamIdleTimeoutMs').optional(),
};

/** An upstream body may go quiet at most this long (or the route's timeout, if longer). */
const MIN_BODY_IDLE_MS = 30_000;

/** RFC 9110's idempotent methods: a retry cannot do what the first try did twice over. */
const IDEMPOTENT: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);

const CLOSE = Object.freeze({ connection: 'close' });

export interface ForwardDeps {
  /** The services of the config being compiled, and their settings in that config. */
  readonly services: ReadonlyMap<string, UpstreamService>;
  readonly serviceConfigs: Readonly<Record<string, ServiceConfig>>;
  /** The upstream call, composed from its layers (app.ts). */
  readonly upstreamCall: UpstreamDispatch;
  readonly tracing: Tracing | null;
}

type ForwardRoute = z.output<z.ZodObject<typeof forwardSchema>> & { readonly maxBodyBytes: number; readonly bodyTimeoutMs: number; readonly websocket?: unknown };

function onIdle(guard: BodyGuard): void {
  // Waiting for the upstream to take what has arrived is not the client pausing.
  if (guard.writableNeedDrain) guard.rearm();
  else guard.destroy(new BodyTimeout(`the request body paused for more than ${guard.idleMs} ms`));
}

/**
 * The client's upload on its way upstream: stopped at the route's limit (a chunked one; a
 * declared length is checked up front), and cut when it pauses longer than the body timeout.
 */
class BodyGuard extends Transform {
  private seen = 0;
  private readonly timer: NodeJS.Timeout;
  constructor(
    private readonly limit: number,
    readonly idleMs: number,
  ) {
    super();
    this.timer = setTimeout(onIdle, idleMs, this);
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.limit) return done(new BodyTooLarge(`request body exceeds ${this.limit} bytes`));
    this.timer.refresh();
    done(null, chunk);
  }
  rearm(): void {
    this.timer.refresh();
  }
  override _flush(done: TransformCallback): void {
    clearTimeout(this.timer);
    done();
  }
  override _destroy(err: Error | null, done: (err: Error | null) => void): void {
    clearTimeout(this.timer);
    done(err);
  }
}

function hashKey(service: UpstreamService, ex: Exchange, req: IncomingMessage): string | undefined {
  const on = service.hashOn;
  if (on === null) return undefined;
  if (on === 'user') return ex.identity?.userId;
  const value = req.headers[on];
  return typeof value === 'string' ? value : undefined;
}

/**
 * Stage, the last of every proxied route: sends the request, as the transform stage made it, to
 * the route's service through the upstream call (the balancer, deadline, retries, breaker and
 * outlier reporting are its layers, upstream/layers/), and streams the answer back. A declared
 * body over the route's limit is refused before any byte is read (413); a chunked one is cut
 * where it passes the limit; an upload that pauses longer than the body timeout is cut (408).
 */
export const forward: RouteStage<ForwardRoute, ForwardDeps> = {
  name: 'forward',
  create(route, { services, serviceConfigs, upstreamCall, tracing }) {
    // A WebSocket route's last stage is websocket.ts.
    if (route.service === undefined || (route.websocket !== undefined && route.websocket !== false)) return null;
    const service = services.get(route.service)!;
    const config = serviceConfigs[route.service]!;
    const settings: UpstreamSettings = Object.freeze({
      timeoutMs: route.timeoutMs,
      bodyIdleTimeoutMs: route.streamIdleTimeoutMs ?? Math.max(route.timeoutMs, MIN_BODY_IDLE_MS),
      pool: poolSettings(route.connectTimeoutMs ?? config.connectTimeoutMs, config.maxConnections),
    });
    const { maxBodyBytes: limit, bodyTimeoutMs } = route;
    const tooLarge = Object.freeze({ code: 'GW_BODY_TOO_LARGE' as const, detail: `request body exceeds ${limit} bytes`, headers: CLOSE });
    return stage('forward', (ex, req, res) => {
      // The gateway's own refusals come first, before any byte of a streamed body is read: a body
      // left unread then costs nothing but the connection, which is closed with the answer.
      const streamed = ex.body === null && hasBody(req);
      const length = req.headers['content-length'];
      if (streamed && length !== undefined && Number(length) > limit) return tooLarge;
      const body: UpstreamBody = ex.body ?? (streamed ? req.pipe(new BodyGuard(limit, bodyTimeoutMs)) : null);
      let headers = ex.upstreamHeaders!;
      if (ex.span !== null && tracing !== null) {
        // The upstream call's span starts here, and its context goes along.
        ex.upstreamSpan = tracing.startChild(ex.span, 'upstream', SpanKind.CLIENT, { 'gateway.service': service.name });
        headers = tracing.inject(headers, ex.upstreamSpan);
      }
      // Only a request whose body the gateway holds (or that has none) can be sent twice.
      const replayable = (body === null || Buffer.isBuffer(body)) && IDEMPOTENT.has(req.method!);
      const call = new UpstreamCall(service, settings, req.method!, ex.upstreamTarget, headers, body, replayable, hashKey(service, ex, req), res, performance.now());
      const handler = new ProxyResponse(ex, res, streamed);
      ex.upstream = call;
      ex.inFlight = handler;
      // The door's place passes to the call (the breaker counts it as active from here).
      ex.leaveDoor();
      upstreamCall(call, handler);
      return ANSWERED;
    });
  },
};
