import type { LoopLag } from '../observability/loop-lag.js';
import { nextRetryAfterTurn, RETRY_AFTER_SPREAD } from '../upstream/retry-after.js';
import type { UpstreamService } from '../upstream/service.js';
import { PASS, stage, type Refusal, type RouteStage } from './exchange.js';
import { hasBody } from './read-body.js';

export interface ShedDeps {
  readonly services: ReadonlyMap<string, UpstreamService>;
  /** Null: no shedding on event-loop delay (LOAD_SHED_EVENT_LOOP_DELAY_MS=0, or a dry run). */
  readonly loopLag: LoopLag | null;
  readonly shedDelayMs: number;
}

interface ShedRoute {
  readonly service?: string;
  readonly websocket?: unknown;
}

/** The same, for a request whose body is still coming: left unread, so the connection is closed with the answer. */
const SPREAD_CLOSE = RETRY_AFTER_SPREAD.map((headers) => Object.freeze({ ...headers, connection: 'close' }));

/**
 * Stage, the first of every proxied route: refuses (503 with Retry-After) what the route's service
 * cannot take, before any token is verified or body read, so that a storm of clients on a slow
 * service costs the gateway as little as possible and leaves the loop, sockets and memory to the
 * other services. Refused: a request whose service has as many requests in flight (or let in
 * by the door and on their way to it: a burst that arrives at once is counted as it arrives) as
 * it is given now (its adaptive limit, upstream/service.ts: at most `maxConcurrentRequests`,
 * fewer while its requests miss their deadlines), and, while the event loop runs later than
 * LOAD_SHED_EVENT_LOOP_DELAY_MS, a request whose service holds a quarter of that or more (the
 * likely cause; services with few requests in flight are served on).
 */
export const shed: RouteStage<ShedRoute, ShedDeps> = {
  name: 'shed',
  create(route, { services, loopLag, shedDelayMs }) {
    if (route.service === undefined || (route.websocket !== undefined && route.websocket !== false)) return null;
    const service = services.get(route.service)!;
    const refusals = (detail: string) =>
      [RETRY_AFTER_SPREAD, SPREAD_CLOSE].map((spread) => spread.map((headers): Refusal => Object.freeze({ code: 'GW_UPSTREAM_OVERLOADED', detail, headers })));
    const full = refusals(`the ${service.name} service has as many requests in flight as it can take now; retry shortly`);
    const lagging = refusals(`the gateway is overloaded and the ${service.name} service holds many of its requests; retry shortly`);
    return stage('shed', (ex, req) => {
      let chosen: Refusal[][];
      const held = service.active + service.entering;
      if (held >= service.allowed) {
        service.shedFull++;
        chosen = full;
      } else if (loopLag !== null && held * 4 >= service.allowed && loopLag.delayMs > shedDelayMs) {
        service.shedLagging++;
        chosen = lagging;
      } else {
        service.entering++;
        ex.entered = service;
        return PASS;
      }
      return chosen[hasBody(req) ? 1 : 0]![nextRetryAfterTurn()];
    });
  },
};
