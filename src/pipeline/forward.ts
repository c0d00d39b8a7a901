import type { IncomingMessage, ServerResponse } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { CompiledRoute } from '../config/compile.js';
import { writeProblem, type ErrorCode } from '../errors.js';
import type { FailureKind, Instance } from '../upstream/instance.js';
import type { UpstreamService } from '../upstream/service.js';
import type { Exchange } from './exchange.js';
import { clientResponseHeaders } from './transform.js';
import { transformQuery } from './route-transform.js';
import { writeUpstreamError } from '../errors.js';

class BodyTooLarge extends Error {
  readonly code = 'GW_BODY_TOO_LARGE';
}

/** The route's deadline passed: the answer is 504, whatever tries are left. */
class ResponseTimeout extends Error {
  readonly code = 'UND_ERR_HEADERS_TIMEOUT';
  constructor(ms: number) {
    super(`no response headers within ${ms} ms`);
  }
}

/** One try took longer than the service's per-try timeout: another instance may answer. */
class TryTimeout extends Error {
  readonly code = 'UND_ERR_HEADERS_TIMEOUT';
  constructor(ms: number) {
    super(`no response headers within the per-try timeout of ${ms} ms`);
  }
}

/** The instance answered with a status the service retries; its answer is dropped. */
class RetriedStatus extends Error {
  readonly code = 'GW_RETRIED_STATUS';
}

/** The gateway answered without calling the upstream (breaker, no instance, body too large). */
class GatewayRefusal extends Error {
  constructor(readonly code: ErrorCode) {
    super(code);
  }
}

class ClientClosed extends Error {
  readonly code = 'GW_CLIENT_CLOSED';
}

/** Counts a chunked upload and stops it at the route's limit; uploads with a length are checked up front. */
class BodyLimit extends Transform {
  private seen = 0;
  constructor(private readonly limit: number) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.limit) done(new BodyTooLarge(`request body exceeds ${this.limit} bytes`));
    else done(null, chunk);
  }
}

const UPSTREAM_ERRORS: Record<string, ErrorCode> = {
  UND_ERR_CONNECT_TIMEOUT: 'GW_UPSTREAM_CONNECT_TIMEOUT',
  UND_ERR_HEADERS_TIMEOUT: 'GW_UPSTREAM_TIMEOUT',
  UND_ERR_BODY_TIMEOUT: 'GW_UPSTREAM_TIMEOUT',
  GW_BODY_TOO_LARGE: 'GW_BODY_TOO_LARGE',
};

function upstreamErrorCode(err: Error): ErrorCode {
  const code = (err as NodeJS.ErrnoException).code ?? '';
  const known = UPSTREAM_ERRORS[code];
  if (known !== undefined) return known;
  if (code.startsWith('HPE_') || code === 'UND_ERR_INFO' || code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH') return 'GW_UPSTREAM_BAD_RESPONSE';
  return 'GW_UPSTREAM_UNAVAILABLE';
}

/** Connection-level errors before any answer: the request never reached the instance. */
const CONNECT_ERRORS: ReadonlySet<string> = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL']);

/** Errors of a connection that broke or an answer that was not HTTP: the instance's doing. */
const RESET_ERRORS: ReadonlySet<string> = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_INFO', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH']);

/**
 * Whose fault a failed try was: the instance's (counted for outlier detection, maybe retried) or
 * not (null): the client left, its body was too large, or the gateway itself could not send the
 * request (a bad argument must not eject healthy instances). `sent`: the request reached the
 * instance, so a deadline that passed is the instance's slowness.
 */
function failureKind(err: Error, sent: boolean): FailureKind | null {
  if (err instanceof BodyTooLarge || err instanceof ClientClosed) return null;
  if (err instanceof ResponseTimeout) return sent ? 'timeout' : null;
  if (err instanceof TryTimeout) return 'timeout';
  if (err instanceof RetriedStatus) return 'status';
  const code = (err as NodeJS.ErrnoException).code ?? '';
  if (CONNECT_ERRORS.has(code)) return 'connect';
  if (code === 'UND_ERR_BODY_TIMEOUT') return 'timeout';
  if (RESET_ERRORS.has(code) || code.startsWith('HPE_')) return 'reset';
  return null;
}

const DETAIL: Partial<Record<ErrorCode, string>> = {
  GW_UPSTREAM_CONNECT_TIMEOUT: 'the upstream service did not accept a connection in time',
  GW_UPSTREAM_TIMEOUT: 'the upstream service did not answer in time',
  GW_UPSTREAM_BAD_RESPONSE: 'the upstream service sent an invalid response',
  GW_UPSTREAM_UNAVAILABLE: 'the upstream service is unreachable',
};

/** RFC 9110's idempotent methods: a retry cannot do what the first try did twice over. */
const IDEMPOTENT: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);

export type ForwardDone = (ex: Exchange, err: Error | null) => void;

type Body = IncomingMessage | BodyLimit | Buffer | null;

function onTimeout(attempt: ProxyAttempt): void {
  attempt.timedOut();
}

/**
 * One try at one instance. The upstream response streams straight onto the client socket, with
 * backpressure both ways: no body is ever buffered whole. A try that fails before any byte of
 * the answer reached the client may hand over to a new try at another instance (a retry).
 */
class ProxyAttempt implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | null = null;
  private started = false;
  /** This try has ended (answered, failed, timed out or handed over); later callbacks change nothing. */
  private settled = false;
  /** The instance answered 5xx: counted against it once the answer is over. */
  private failedStatus = false;
  /** The answer was an upstream error replaced by the gateway's own: its body is dropped. */
  private mapped = false;
  private onDrain: (() => void) | null = null;
  private readonly timer: NodeJS.Timeout;
  private readonly sentAt: number;
  private perTry = false;
  /** Where the next try goes, chosen when this one gave up on a retryable status. */
  private next: Instance | null = null;

  constructor(
    private readonly ex: Exchange,
    private readonly route: CompiledRoute,
    private readonly service: UpstreamService,
    private readonly inst: Instance,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly headers: string[],
    /** The upstream path and query, rewritten and transformed once for every try. */
    private readonly target: string,
    private readonly body: Body,
    private readonly done: ForwardDone,
    /** performance.now() by which the route's timeout ends the exchange. */
    private readonly deadline: number,
    /** Instances tried before this one; null on a first try that may never be retried. */
    private readonly tried: Instance[] | null,
    /** performance.now(), read once by the caller. */
    now: number,
  ) {
    this.sentAt = now;
    // undici's own headersTimeout runs on a coarse timer (about 500 ms ticks) and only once the
    // request is written: a 200 ms route timeout could fire after a second, and a request queued
    // behind a busy pool would have none. The route's timeout gets a timer of its own.
    // Shared functions with arguments rather than closures: nothing extra to allocate per request.
    let ms = Math.max(1, deadline - now);
    const perTryMs = service.retry?.perTryTimeoutMs;
    if (tried !== null && perTryMs !== undefined && perTryMs < ms) {
      ms = perTryMs;
      this.perTry = true;
    }
    this.timer = setTimeout(onTimeout, ms, this);
    // The response's one 'close' listener (app.ts) tells the exchange, which tells this try.
    ex.inFlight = this;
    ex.upstreamOrigin = inst.origin;
    inst.active++;
    inst.requests++;
    service.active++;
  }

  dispatch(): void {
    this.inst.pool(this.route.pool).dispatch(
      {
        path: this.target,
        method: this.req.method!,
        headers: this.headers,
        body: this.body,
        // The timer above keeps the response deadline (precise, and covering queued requests).
        headersTimeout: 0,
        bodyTimeout: this.route.bodyIdleTimeoutMs,
      },
      this,
    );
  }

  timedOut(): void {
    const err = this.perTry ? new TryTimeout(this.service.retry!.perTryTimeoutMs!) : new ResponseTimeout(this.route.timeoutMs);
    if (this.controller !== null) this.controller.abort(err);
    else this.fail(err);
  }

  clientClosed(): void {
    if (!this.res.writableFinished) this.controller?.abort(new ClientClosed('client closed the connection'));
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.settled || this.res.destroyed) controller.abort(new ClientClosed('the exchange has already ended'));
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    if (statusCode < 200 || this.settled) return;
    clearTimeout(this.timer);
    this.inst.recordLatency((performance.now() - this.sentAt) / 1000);
    if (statusCode >= 500) {
      this.failedStatus = true;
      if (this.service.retryStatuses.has(statusCode)) {
        this.next = this.retryTarget();
        if (this.next !== null) {
          controller.abort(new RetriedStatus(`the instance answered ${statusCode}`));
          return;
        }
      }
    }
    this.started = true;
    this.ex.upstreamStatus = statusCode;
    if (statusCode >= 400 && this.route.transform?.mapErrors === true) {
      // The upstream's error body (a stack trace, a patient's name in a message) never reaches
      // the client: the gateway's one error shape with the same status does. The body is read
      // and dropped, so the connection stays usable.
      this.mapped = true;
      writeUpstreamError(this.res, statusCode, this.ex.id, headers['retry-after'], this.ex.answerHeaders);
      return;
    }
    this.res.writeHead(statusCode, clientResponseHeaders(headers, this.ex));
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.mapped) return;
    if (!this.res.write(chunk)) {
      controller.pause();
      this.onDrain ??= () => this.controller?.resume();
      this.res.once('drain', this.onDrain);
    }
  }

  onResponseEnd(): void {
    if (this.settled) return;
    this.settle(this.failedStatus ? 'status' : 'ok');
    if (!this.mapped) this.res.end();
    this.done(this.ex, null);
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    this.fail(err);
  }

  /** Ends this try: `ok` and failures count for outlier detection, `neutral` (not the instance's doing) for nothing. */
  private settle(outcome: FailureKind | 'ok' | 'neutral'): void {
    this.settled = true;
    clearTimeout(this.timer);
    this.inst.active--;
    this.service.active--;
    if (outcome === 'ok') this.service.succeeded(this.inst);
    else if (outcome !== 'neutral') this.service.failed(this.inst, outcome, performance.now());
  }

  private fail(err: Error): void {
    if (this.settled) return;
    const kind = failureKind(err, this.controller !== null);
    this.settle(kind ?? 'neutral');
    if (this.started || this.res.destroyed) {
      // Part of the answer is on its way: the only honest signal left is a broken connection.
      this.res.destroy();
      this.done(this.ex, err);
      return;
    }
    const next = err instanceof RetriedStatus ? this.next : kind !== null ? this.retryTarget() : null;
    if (next !== null) {
      this.ex.retries++;
      const tried = this.tried!;
      tried.push(this.inst);
      new ProxyAttempt(this.ex, this.route, this.service, next, this.req, this.res, this.headers, this.target, this.body, this.done, this.deadline, tried, performance.now()).dispatch();
      return;
    }
    const code = upstreamErrorCode(err);
    this.ex.errorCode = code;
    writeProblem(
      this.res,
      code,
      this.ex.id,
      code === 'GW_BODY_TOO_LARGE' ? err.message : DETAIL[code]!,
      code === 'GW_BODY_TOO_LARGE' ? { connection: 'close' } : undefined,
      this.ex.answerHeaders,
    );
    this.done(this.ex, err);
  }

  /**
   * The instance for a retry, if one is allowed: a replayable request, tries left, time left
   * before the route's deadline, an instance not tried yet, and room in the retry budget.
   */
  private retryTarget(): Instance | null {
    const policy = this.service.retry;
    if (this.tried === null || policy === null || this.tried.length >= policy.retries || this.res.destroyed) return null;
    const now = performance.now();
    if (now >= this.deadline) return null;
    this.tried.push(this.inst);
    const next = this.service.pick(hashKey(this.service, this.ex, this.req), now, this.tried);
    this.tried.pop();
    if (next === null) return null;
    if (!this.service.budget.tryRetry(now)) {
      this.service.retriesRefused++;
      return null;
    }
    this.service.retries++;
    return next;
  }
}

function hasBody(req: IncomingMessage): boolean {
  const headers = req.headers;
  const length = headers['content-length'];
  if (headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')) return true;
  // HTTP/2 frames a body without either field: it has one unless the headers ended the stream.
  if (req.httpVersionMajor === 2) return length === undefined && (req as unknown as { stream?: { endAfterHeaders?: boolean } }).stream?.endAfterHeaders !== true;
  return false;
}

function hashKey(service: UpstreamService, ex: Exchange, req: IncomingMessage): string | undefined {
  const on = service.hashOn;
  if (on === null) return undefined;
  if (on === 'user') return ex.identity?.userId;
  const value = req.headers[on];
  return typeof value === 'string' ? value : undefined;
}

/**
 * Sends the request to an instance of the route's service, unless its declared body is over
 * the route's limit (413), the service's circuit breaker is open (503) or no instance is in
 * rotation (502): then the gateway answers itself.
 */
export function forward(
  ex: Exchange,
  route: CompiledRoute,
  req: IncomingMessage,
  res: ServerResponse,
  headers: string[],
  done: ForwardDone,
  /** A body the gateway has already read (auth flows); otherwise the client's is streamed. */
  readBody: Buffer | null,
): void {
  // The gateway's own refusals come first, before any byte of a streamed body is read: a body
  // left unread then costs nothing but the connection, which is closed with the answer.
  const streamed = readBody === null && hasBody(req);
  const refuse = (code: ErrorCode, detail: string, headers: Record<string, string>): void => {
    ex.errorCode = code;
    writeProblem(res, code, ex.id, detail, streamed ? { ...headers, connection: 'close' } : headers, ex.answerHeaders);
    // Every end of a forward passes through `done` (a login flow gives its attempt back there).
    done(ex, new GatewayRefusal(code));
  };
  const length = req.headers['content-length'];
  if (streamed && length !== undefined && Number(length) > route.maxBodyBytes) {
    return refuse('GW_BODY_TOO_LARGE', `request body exceeds ${route.maxBodyBytes} bytes`, {});
  }
  const service = route.service!;
  if (service.active >= service.maxActive) {
    service.overflows++;
    return refuse('GW_UPSTREAM_OVERLOADED', `the ${service.name} service has ${service.maxActive} requests in flight; retry shortly`, { 'retry-after': '1' });
  }
  const now = performance.now();
  const inst = service.pick(hashKey(service, ex, req), now, null);
  if (inst === null) {
    service.unavailable++;
    return refuse('GW_NO_HEALTHY_UPSTREAM', `no instance of the ${service.name} service is healthy`, { 'retry-after': String(service.retryAfterSeconds(now)) });
  }
  const body: Body = readBody ?? (streamed ? (length === undefined ? req.pipe(new BodyLimit(route.maxBodyBytes)) : req) : null);
  // Only a request whose body the gateway holds (or that has none) can be sent twice.
  const canRetry = service.retry !== null && service.instances.length > 1;
  const replayable = canRetry && (body === null || Buffer.isBuffer(body)) && IDEMPOTENT.has(req.method!);
  if (canRetry) service.budget.request(now);
  const path = route.rewrite(ex.path, ex.params);
  const queryOps = route.transform?.query;
  const query = queryOps == null ? ex.query : transformQuery(ex.query, queryOps, ex);
  new ProxyAttempt(ex, route, service, inst, req, res, headers, query === '' ? path : `${path}?${query}`, body, done, now + route.timeoutMs, replayable ? [] : null, now).dispatch();
}
