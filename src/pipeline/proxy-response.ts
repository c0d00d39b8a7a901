import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { writeProblem, writeUpstreamError } from '../errors.js';
import type { UpstreamHandler } from '../upstream/call.js';
import { ClientClosed, type UpstreamFailure } from '../upstream/failures.js';
import type { Exchange } from './exchange.js';

/**
 * The top of the upstream call: streams the upstream's answer onto the client's response, with
 * backpressure both ways (a slow client pauses the upstream; no body is ever buffered whole), or
 * answers for a failed call with the gateway's problem. Once part of an answer has left, the only
 * honest signal of a failure is a broken connection.
 */
export class ProxyResponse implements UpstreamHandler {
  private controller: Dispatcher.DispatchController | null = null;
  /** The response head went to the client. */
  private started = false;
  /** The answer was an upstream error replaced by the gateway's own: its body is dropped. */
  private mapped = false;
  private onDrain: (() => void) | null = null;

  constructor(
    private readonly ex: Exchange,
    private readonly res: ServerResponse,
    /** The client's body is being streamed: a refusal leaves the rest unread, so the connection closes. */
    private readonly streamed: boolean,
  ) {}

  /** The client's response closed (the exit phase tells): an upstream try still running is abandoned. */
  clientClosed(): void {
    if (!this.res.writableFinished) this.controller?.abort(new ClientClosed('client closed the connection'));
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.res.destroyed) controller.abort(new ClientClosed('the exchange has already ended'));
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    if (statusCode < 200) return;
    const ex = this.ex;
    this.started = true;
    ex.upstreamStatus = statusCode;
    if (statusCode >= 400 && ex.mapErrors) {
      // The upstream's error body (a stack trace, a patient's name in a message) never reaches
      // the client: the gateway's one error shape with the same status does. The body is read
      // and dropped, so the connection stays usable.
      this.mapped = true;
      writeUpstreamError(this.res, statusCode, ex.id, headers['retry-after'], ex.answerHeaders);
      return;
    }
    this.res.writeHead(statusCode, ex.responseHeaders!(headers, ex));
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
    if (!this.mapped) this.res.end();
  }

  /** Every failure arrives mapped (upstream/layers/error-map.ts). */
  onResponseError(_controller: Dispatcher.DispatchController | null, error: Error): void {
    const failure = error as UpstreamFailure;
    const ex = this.ex;
    if (this.started || this.res.destroyed) {
      this.res.destroy();
      return;
    }
    ex.errorCode = failure.code;
    if (failure.causeCode !== null && ex.upstreamOrigin !== null) ex.upstreamFailure = failure.causeCode;
    // A refusal before any try left the client's body unread: the connection goes with the answer.
    const headers = this.streamed && failure.causeCode === null ? { ...failure.headers, connection: 'close' } : failure.headers;
    writeProblem(this.res, failure.code, ex.id, failure.detail, headers, ex.answerHeaders);
  }
}
