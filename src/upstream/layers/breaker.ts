import { Decorator, type UpstreamHandler, type UpstreamLayer } from '../call.js';
import { GatewayRefusal } from '../failures.js';
import { nextRetryAfterTurn, RETRY_AFTER_SPREAD } from '../retry-after.js';
import type { UpstreamService } from '../service.js';

type Controller = Parameters<UpstreamHandler['onResponseError']>[0];

/** Gives the call's place back when it ends, however it ends. */
class Release extends Decorator {
  constructor(
    handler: UpstreamHandler,
    private readonly service: UpstreamService,
  ) {
    super(handler);
  }
  override onResponseEnd(controller: NonNullable<Controller>, trailers: Parameters<UpstreamHandler['onResponseEnd']>[1]): void {
    this.service.active--;
    this.handler.onResponseEnd(controller, trailers);
  }
  override onResponseError(controller: Controller, error: Error): void {
    this.service.active--;
    this.handler.onResponseError(controller, error);
  }
}

/**
 * The circuit breaker: a service holds at most `maxConcurrentRequests` calls in flight or queued,
 * across its instances; past that, 503 at once, so that a slow service cannot pile up requests
 * (and memory) in the gateway.
 */
export const breaker: UpstreamLayer = (next) => (call, handler) => {
  const service = call.service;
  if (service.active >= service.maxActive) {
    service.overflows++;
    handler.onResponseError(null, new GatewayRefusal('GW_UPSTREAM_OVERLOADED', `the ${service.name} service has ${service.maxActive} requests in flight; retry shortly`, RETRY_AFTER_SPREAD[nextRetryAfterTurn()]));
    return;
  }
  service.active++;
  next(call, new Release(handler, service));
};
