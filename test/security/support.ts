import type { TestGateway } from '../helpers/gateway.js';

/** Not a test file: shared by the security tests. */

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/**
 * The access log is written when the response finishes on the server side, which can be a turn of
 * the event loop after the client has read it: wait for the line rather than for a fixed time.
 */
export async function waitForLog(gw: TestGateway, match: (line: Record<string, unknown>) => boolean, what = 'a matching log line', timeoutMs = 1_000): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = gw.logs.find(match);
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms (${gw.logs.length} lines captured)`);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

export function accessLine(gw: TestGateway, requestId: string): Promise<Record<string, unknown>> {
  return waitForLog(gw, (l) => l.request_id === requestId && (l.message === 'request' || l.message === 'slow request'), `access-log line for request ${requestId}`);
}
