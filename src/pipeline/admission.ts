import { PASS, stage, type Refusal, type Stage } from './exchange.js';
import { FramingGuard } from './framing.js';

const CLOSE = Object.freeze({ connection: 'close' });
const SHUTTING_DOWN: Refusal = Object.freeze({ code: 'GW_SHUTTING_DOWN', detail: 'the gateway is shutting down; retry on a new connection', headers: CLOSE });

/**
 * Stage: the gate every request passes first, own endpoint or proxied. Framing that a proxy and
 * an upstream could read differently is refused and its connection closed for good (framing.ts);
 * during shutdown a request on a kept-alive connection is told to retry on a new one.
 */
export function admission(isShuttingDown: () => boolean): Stage {
  const framing = new FramingGuard();
  return stage('admission', (_ex, req) => {
    const bad = framing.check(req);
    if (bad !== null) {
      framing.refuseConnection(req.socket);
      return { code: 'GW_BAD_REQUEST', detail: bad, headers: CLOSE };
    }
    return isShuttingDown() ? SHUTTING_DOWN : PASS;
  });
}
