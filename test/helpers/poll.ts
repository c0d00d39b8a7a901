import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import { send } from './http.js';

/**
 * Probes until `probe` returns something other than undefined, for at most `timeoutMs`: a
 * bounded wait for a change that announces itself to no one (a reconnect, a message in flight).
 * The pause only spaces the probes; the deadline is what bounds the wait.
 */
export async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, pauseMs = 20): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const startedAt = performance.now();
    const found = await probe();
    if (found !== undefined) return found;
    if (startedAt >= deadline) assert.fail(`${what} did not happen within ${timeoutMs} ms`);
    await delay(pauseMs);
  }
}

/** What GET /health says of the shared store (Redis). */
export async function databaseStatus(gatewayUrl: string): Promise<string> {
  const res = await send(`${gatewayUrl}/health`);
  return (JSON.parse(res.text) as { dependencies: { database: string } }).dependencies.database;
}

/**
 * The gateway connects to Redis after it starts listening (and again after an outage); tests about
 * the shared store begin once /health reports it. Needs HEALTH_CACHE_MS=0 on the gateway.
 */
export function untilDatabase(gatewayUrl: string, status: 'healthy' | 'degraded', timeoutMs = 10_000): Promise<true> {
  return until(`${gatewayUrl}/health reporting the database ${status}`, timeoutMs, async () => ((await databaseStatus(gatewayUrl)) === status ? true : undefined), 50);
}
