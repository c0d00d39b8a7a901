import type { UpstreamLayer } from '../call.js';
import { GatewayRefusal } from '../failures.js';

/**
 * The first try's instance, from the service's balancer (balancers/); 502 when none is in
 * rotation, with a Retry-After of when one may be back. Later tries are chosen by the retry layer.
 */
export const balance: UpstreamLayer = (next) => (call, handler) => {
  const service = call.service;
  const inst = service.pick(call.hashKey, call.startedAt, null);
  if (inst === null) {
    service.unavailable++;
    const retryAfter = String(service.retryAfterSeconds(call.startedAt));
    handler.onResponseError(null, new GatewayRefusal('GW_NO_HEALTHY_UPSTREAM', `no instance of the ${service.name} service is healthy`, { 'retry-after': retryAfter }));
    return;
  }
  call.instance = inst;
  next(call, handler);
};
