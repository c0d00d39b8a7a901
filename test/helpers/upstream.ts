import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** The User-Agent of the gateway's active health checks (src/upstream/health-checker.ts). */
export const HEALTH_CHECK_AGENT = 'api-gateway-health-check';

export interface ReceivedRequest {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  rawHeaders: string[];
  bodyBytes: number;
}

export type UpstreamHandler = (req: IncomingMessage, res: ServerResponse, received: ReceivedRequest) => void | Promise<void>;

export interface TestUpstream {
  url: string;
  port: number;
  server: Server;
  /** Every request the upstream saw, in order, with its body size once read (the gateway's health checks aside). */
  received: ReceivedRequest[];
  /** The gateway's active health checks: answered 200 here, unless the test's handler takes them. */
  healthChecks: ReceivedRequest[];
  close(): Promise<void>;
}

/**
 * A real HTTP server on loopback. The default handler drains the body and answers 200 with a
 * JSON echo of what arrived; a custom handler may do anything (the body is not read for it).
 */
export async function startUpstream(handler?: UpstreamHandler, port = 0, options: { handleHealthChecks?: boolean } = {}): Promise<TestUpstream> {
  const received: ReceivedRequest[] = [];
  const healthChecks: ReceivedRequest[] = [];
  const server = createServer((req, res) => {
    const entry: ReceivedRequest = { method: req.method!, url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders, bodyBytes: 0 };
    if (req.headers['user-agent'] === HEALTH_CHECK_AGENT) {
      healthChecks.push(entry);
      if (!options.handleHealthChecks) {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"healthy"}');
        return;
      }
    } else received.push(entry);
    if (handler) {
      void Promise.resolve(handler(req, res, entry)).catch(() => res.destroy());
      return;
    }
    req.on('data', (chunk: Buffer) => {
      entry.bodyBytes += chunk.length;
    });
    req.on('end', () => {
      const body = JSON.stringify({ method: entry.method, url: entry.url, headers: entry.headers, bodyBytes: entry.bodyBytes });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const actual = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${actual}`,
    port: actual,
    server,
    received,
    healthChecks,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
