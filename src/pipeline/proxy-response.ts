import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { writeProblem, writeUpstreamError } from '../errors.js';
import type { UpstreamHandler } from '../upstream/call.js';
import { ClientClosed, type UpstreamFailure } from '../upstream/failures.js';
import { awaitRecord, recordedNow, UNAUDITABLE } from './audit-gate.js';
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
  /**
   * On a write-ahead route, what the upstream said before the access record was durable, replayed
   * in order once it is (the upstream paused meanwhile); null when nothing is held.
   */
  private held: Array<() => void> | null = null;
  /** The access record could not be made durable: the answer was replaced by a 503. */
  private unaudited = false;

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

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    if (statusCode < 200 || this.unaudited) return;
    if (this.ex.accessRecord !== null && this.mustHold(controller)) {
      this.held!.push(() => this.onResponseStart(controller, statusCode, headers));
      return;
    }
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
    if (this.held !== null) {
      this.held.push(() => this.onResponseData(controller, chunk));
      return;
    }
    if (this.mapped || this.unaudited) return;
    this.ex.bytesOut += chunk.length;
    if (!this.res.write(chunk)) {
      controller.pause();
      this.onDrain ??= () => this.controller?.resume();
      this.res.once('drain', this.onDrain);
    }
  }

  onResponseEnd(controller: Dispatcher.DispatchController): void {
    if (this.held !== null) {
      this.held.push(() => this.onResponseEnd(controller));
      return;
    }
    if (!this.mapped && !this.unaudited) this.res.end();
  }

  /** Every failure arrives mapped (upstream/layers/error-map.ts). */
  onResponseError(controller: Dispatcher.DispatchController | null, error: Error): void {
    if (this.unaudited) return;
    if (this.ex.accessRecord !== null && !this.res.destroyed && this.mustHold(controller)) {
      this.held!.push(() => this.onResponseError(controller, error));
      return;
    }
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

  /**
   * Whether the answer must wait for the exchange's access record: true while it is held (the
   * upstream paused), until the record is durable, or the answer becomes a 503 if it cannot be.
   */
  private mustHold(controller: Dispatcher.DispatchController | null): boolean {
    if (this.held !== null) return true;
    if (recordedNow(this.ex)) return false;
    this.held = [];
    controller?.pause();
    awaitRecord(this.ex, (ok) => {
      const held = this.held!;
      this.held = null;
      if (ok) {
        for (const next of held) next();
        // Unless the replay filled the client's buffer: then its drain resumes the upstream.
        if (!this.res.writableNeedDrain) controller?.resume();
        return;
      }
      this.unaudited = true;
      const ex = this.ex;
      ex.errorCode = UNAUDITABLE.code;
      controller?.abort(new ClientClosed('the access record could not be made durable'));
      if (!this.res.destroyed) writeProblem(this.res, UNAUDITABLE.code, ex.id, UNAUDITABLE.detail, UNAUDITABLE.headers, ex.answerHeaders);
    });
    return true;
  }
}
