/**
 * A slow service and a storm of clients on it, in a process of their own so that the test
 * measuring the routes beside it keeps its event loop to itself. Run as
 * `node --import tsx test/helpers/storm.ts ANSWER_AFTER_MS`: it starts an upstream that answers
 * each request after ANSWER_AFTER_MS and prints `{"url": ...}`. Sent a line
 * `{"gateway", "path", "clients", "durationMs", "token"}` on stdin, it runs the storm: each client
 * sends a request, waits for the answer and sends the next; an answer with Retry-After is
 * honoured, as a well-behaved client would. At the end it prints the count of each status (and of
 * failures) as one JSON line and exits.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import { Pool } from 'undici';

const answerAfterMs = Number(process.argv[2]);
const upstream = createServer((req, res) => {
  req.resume();
  // The gateway's health checks pass: the service is slow, not down.
  if (req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"healthy"}');
    return;
  }
  const timer = setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end('{}'), answerAfterMs);
  res.on('close', () => clearTimeout(timer));
});
upstream.keepAliveTimeout = 60_000;
await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
process.stdout.write(`${JSON.stringify({ url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` })}\n`);

const [line] = await createInterface({ input: process.stdin })[Symbol.asyncIterator]().next().then((r) => [r.value as string]);
const { gateway, path, clients, durationMs, token } = JSON.parse(line!) as { gateway: string; path: string; clients: number; durationMs: number; token: string };
const pool = new Pool(gateway, { connections: clients, pipelining: 1 });
const counts: Record<string, number> = {};
const until = performance.now() + durationMs;

async function client(): Promise<void> {
  while (performance.now() < until) {
    let wait = 0;
    try {
      const res = await pool.request({ path, method: 'GET', headers: { authorization: `Bearer ${token}` }, headersTimeout: 60_000, bodyTimeout: 60_000 });
      await res.body.dump();
      counts[res.statusCode] = (counts[res.statusCode] ?? 0) + 1;
      const after = Number(res.headers['retry-after']);
      if (Number.isFinite(after) && after > 0) wait = after * 1000;
    } catch {
      counts.failed = (counts.failed ?? 0) + 1;
      wait = 100;
    }
    if (wait > 0) await new Promise((r) => setTimeout(r, Math.min(wait, Math.max(0, until - performance.now()))));
  }
}

await Promise.all(Array.from({ length: clients }, client));
process.stdout.write(`${JSON.stringify(counts)}\n`);
await pool.destroy();
upstream.closeAllConnections();
upstream.close();
process.exit(0);
