import type { IncomingHttpHeaders } from 'node:http';
import { Decorator, type UpstreamCall, type UpstreamDispatch, type UpstreamHandler, type UpstreamLayer } from '../call.js';
import { failureKind, RetriedStatus } from '../failures.js';
import type { Instance } from '../instance.js';

type Controller = Parameters<UpstreamHandler['onResponseError']>[0];

/**
 * Watches every try of a call that may be retried, and sends a failed one again to an instance
 * not tried yet. Only failures before any byte of the answer was passed on qualify: an
 * instance's fault (connect, reset, a per-try timeout) or a status the service retries.
 */
class Retrying extends Decorator {
  /** A response head went on towards the client: nothing can be retried any more. */
  private started = false;
  /** Where the next try goes, chosen when this one gave up on a retryable status. */
  private pending: Instance | null = null;

  constructor(
    handler: UpstreamHandler,
    private readonly call: UpstreamCall,
    private readonly send: UpstreamDispatch,
  ) {
    super(handler);
  }

  override onResponseStart(controller: NonNullable<Controller>, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    if (statusCode >= 500 && this.call.service.retryStatuses.has(statusCode)) {
      this.pending = this.target();
      if (this.pending !== null) {
        controller.abort(new RetriedStatus(`the instance answered ${statusCode}`));
        return;
      }
    }
    if (statusCode >= 200) this.started = true;
    this.handler.onResponseStart(controller, statusCode, headers, statusMessage);
  }

  override onResponseError(controller: Controller, error: Error): void {
    if (!this.started) {
      const next = error instanceof RetriedStatus ? this.pending : failureKind(error, true) !== null ? this.target() : null;
      this.pending = null;
      if (next !== null) {
        const call = this.call;
        call.tried!.push(call.instance!);
        call.instance = next;
        call.retries++;
        this.send(call, this);
        return;
      }
    }
    this.handler.onResponseError(controller, error);
  }

  /**
   * The instance for another try, if one is allowed: tries left, the client still there, time
   * left before the route's deadline, an instance not tried yet, and room in the retry budget.
   */
  private target(): Instance | null {
    const call = this.call;
    const service = call.service;
    const policy = service.retry;
    const tried = call.tried!;
    if (policy === null || tried.length >= policy.retries || call.client.destroyed) return null;
    const now = performance.now();
    if (now >= call.deadline) return null;
    tried.push(call.instance!);
    const next = service.pick(call.hashKey, now, tried);
    tried.pop();
    if (next === null) return null;
    if (!service.budget.tryRetry(now)) {
      service.retriesRefused++;
      return null;
    }
    service.retries++;
    return next;
  }
}

/**
 * Retries with a budget: a call to a service with a retry policy and more than one instance
 * counts towards its budget (retries stay a share of its requests, retry-budget.ts), and is
 * retried only when it can be sent twice (the forward stage says: `replayable`).
 */
export const retry: UpstreamLayer = (next) => (call, handler) => {
  const service = call.service;
  if (service.retry === null || service.instances.length < 2) return next(call, handler);
  service.budget.request(call.startedAt);
  if (!call.replayable) return next(call, handler);
  call.tried = [];
  next(call, new Retrying(handler, call, next));
};
