import type { IncomingMessage, ServerResponse } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { CompiledRoute } from '../config/compile.js';
import { writeProblem, type ErrorCode } from '../errors.js';
import type { Exchange } from './exchange.js';
import { clientResponseHeaders } from './transform.js';

class BodyTooLarge extends Error {
  readonly code = 'GW_BODY_TOO_LARGE';
}

class ResponseTimeout extends Error {
  readonly code = 'UND_ERR_HEADERS_TIMEOUT';
  constructor(ms: number) {
    super(`no response headers within ${ms} ms`);
  }
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

const DETAIL: Partial<Record<ErrorCode, string>> = {
  GW_UPSTREAM_CONNECT_TIMEOUT: 'the upstream service did not accept a connection in time',
  GW_UPSTREAM_TIMEOUT: 'the upstream service did not answer in time',
  GW_UPSTREAM_BAD_RESPONSE: 'the upstream service sent an invalid response',
  GW_UPSTREAM_UNAVAILABLE: 'the upstream service is unreachable',
};

export type ForwardDone = (ex: Exchange, err: Error | null) => void;

/**
 * Streams the upstream response straight onto the client socket, with backpressure both ways:
 * no body is ever buffered whole.
 */
function onTimeout(handler: ProxyHandler, timeoutMs: number): void {
  handler.timedOut(timeoutMs);
}

class ProxyHandler implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | null = null;
  private started = false;
  /** The exchange has ended (answered, failed or timed out); later callbacks change nothing. */
  private settled = false;
  private onDrain: (() => void) | null = null;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly ex: Exchange,
    private readonly res: ServerResponse,
    private readonly done: ForwardDone,
    timeoutMs: number,
  ) {
    // undici's own headersTimeout runs on a coarse timer (about 500 ms ticks) and only once the
    // request is written: a 200 ms route timeout could fire after a second, and a request queued
    // behind a busy pool would have none. The route's timeout gets a timer of its own.
    // Shared functions with arguments rather than closures: nothing extra to allocate per request.
    this.timer = setTimeout(onTimeout, timeoutMs, this, timeoutMs);
    // The response's one 'close' listener (app.ts) tells the exchange, which tells this handler.
    ex.inFlight = this;
  }

  timedOut(timeoutMs: number): void {
    const err = new ResponseTimeout(timeoutMs);
    if (this.controller !== null) this.controller.abort(err);
    else this.fail(err);
  }

  clientClosed(): void {
    if (!this.res.writableFinished) this.controller?.abort(new Error('client closed the connection'));
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.settled || this.res.destroyed) controller.abort(new Error('the exchange has already ended'));
  }

  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    if (statusCode < 200 || this.settled) return;
    clearTimeout(this.timer);
    this.started = true;
    this.ex.upstreamStatus = statusCode;
    this.res.writeHead(statusCode, clientResponseHeaders(headers, this.ex));
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.res.write(chunk)) {
      controller.pause();
      this.onDrain ??= () => this.controller?.resume();
      this.res.once('drain', this.onDrain);
    }
  }

  onResponseEnd(): void {
    if (this.settled) return;
    this.settled = true;
    this.res.end();
    this.done(this.ex, null);
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    this.fail(err);
  }

  private fail(err: Error): void {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    if (this.started || this.res.destroyed) {
      // Part of the answer is on its way: the only honest signal left is a broken connection.
      this.res.destroy();
    } else {
      const code = upstreamErrorCode(err);
      this.ex.errorCode = code;
      writeProblem(this.res, code, this.ex.id, code === 'GW_BODY_TOO_LARGE' ? err.message : DETAIL[code]!, {
        ...(code === 'GW_BODY_TOO_LARGE' ? { connection: 'close' } : undefined),
      });
    }
    this.done(this.ex, err);
  }
}

function hasBody(headers: IncomingMessage['headers']): boolean {
  const length = headers['content-length'];
  return headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/**
 * Sends the request to one instance of the route's service, unless its declared body is over
 * the route's limit: then the gateway answers 413 itself.
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
  let body: IncomingMessage | BodyLimit | Buffer | null = readBody;
  if (body === null && hasBody(req.headers)) {
    const length = req.headers['content-length'];
    if (length !== undefined && Number(length) > route.maxBodyBytes) {
      ex.errorCode = 'GW_BODY_TOO_LARGE';
      writeProblem(res, 'GW_BODY_TOO_LARGE', ex.id, `request body exceeds ${route.maxBodyBytes} bytes`, { connection: 'close' });
      return;
    }
    body = length === undefined ? req.pipe(new BodyLimit(route.maxBodyBytes)) : req;
  }

  const service = route.service!;
  const index = service.origins.length === 1 ? 0 : service.cursor++ % service.origins.length;
  if (service.cursor > 1e9) service.cursor = 0;
  ex.upstreamOrigin = service.origins[index]!;
  const path = route.rewrite(ex.path, ex.params);

  route.upstreams[index]!.dispatch(
    {
      path: ex.query === '' ? path : `${path}?${ex.query}`,
      method: req.method!,
      headers,
      body,
      // ProxyHandler keeps the response timeout itself (precise, and covering queued requests).
      headersTimeout: 0,
      bodyTimeout: route.bodyIdleTimeoutMs,
    },
    new ProxyHandler(ex, res, done, route.timeoutMs),
  );
}
