import type { IncomingHttpHeaders } from 'node:http';
import { Decorator, type UpstreamHandler, type UpstreamLayer } from '../call.js';
import { failureKind } from '../failures.js';
import type { FailureKind, Instance } from '../instance.js';
import type { UpstreamService } from '../service.js';

type Controller = Parameters<UpstreamHandler['onResponseError']>[0];

/** One try at one instance, reported to it: in flight, latency, and the outcome. */
class TryReport extends Decorator {
  /** The request reached the instance (a connection took it). */
  private sent = false;
  /** The instance answered 5xx: counted against it once the answer is over. */
  private failedStatus = false;
  private settled = false;

  constructor(
    handler: UpstreamHandler,
    private readonly service: UpstreamService,
    private readonly inst: Instance,
    private readonly sentAt: number,
  ) {
    super(handler);
    inst.active++;
    inst.requests++;
  }

  override onRequestStart(controller: NonNullable<Controller>, context: unknown): void {
    this.sent = true;
    this.handler.onRequestStart(controller, context);
  }

  override onResponseStart(controller: NonNullable<Controller>, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    if (statusCode >= 200 && !this.settled) {
      this.inst.recordLatency((performance.now() - this.sentAt) / 1000);
      if (statusCode >= 500) this.failedStatus = true;
    }
    this.handler.onResponseStart(controller, statusCode, headers, statusMessage);
  }

  override onResponseEnd(controller: NonNullable<Controller>, trailers: IncomingHttpHeaders): void {
    this.settle(this.failedStatus ? 'status' : 'ok');
    this.handler.onResponseEnd(controller, trailers);
  }

  override onResponseError(controller: Controller, error: Error): void {
    this.settle(failureKind(error, this.sent) ?? 'neutral');
    this.handler.onResponseError(controller, error);
  }

  /** `ok` and failures count for outlier detection; `neutral` (not the instance's doing) for nothing. */
  private settle(outcome: FailureKind | 'ok' | 'neutral'): void {
    if (this.settled) return;
    this.settled = true;
    this.inst.active--;
    if (outcome === 'ok') this.service.succeeded(this.inst);
    else if (outcome !== 'neutral') this.service.failed(this.inst, outcome, performance.now());
  }
}

/**
 * Outlier reporting: every try tells its instance how it went, so passive outlier detection
 * (service.ts) can eject an instance that keeps failing on real traffic, and least-request sees
 * what each instance has in flight. Failures that are not the instance's doing count for nothing.
 */
export const outlier: UpstreamLayer = (next) => (call, handler) => next(call, new TryReport(handler, call.service, call.instance!, performance.now()));
