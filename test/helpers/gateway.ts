import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parse, stringify } from 'yaml';
import { startGateway, type RunningGateway } from '../../src/start.js';
import { TEST_SECRET } from './tokens.js';

export interface TestGateway extends RunningGateway {
  url: string;
  /** Every log line the gateway wrote, parsed. */
  logs: Array<Record<string, unknown>>;
  routesFile: string;
  close(): Promise<void>;
}

/** Collects pino's JSON lines in memory, synchronously, so a test can read them right away. */
export class LogCapture extends Writable {
  readonly lines: Array<Record<string, unknown>> = [];
  readonly text: string[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (line.trim() === '') continue;
      this.text.push(line);
      this.lines.push(JSON.parse(line) as Record<string, unknown>);
    }
    done();
  }

  /** The lines of one level and message. */
  messages(level: string, message: string): Array<Record<string, unknown>> {
    return this.lines.filter((l) => l.level === level && l.message === message);
  }
}

export async function writeRoutesFile(routes: unknown): Promise<{ file: string; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'gw-test-'));
  const file = join(dir, 'routes.yaml');
  await writeFile(file, typeof routes === 'string' ? routes : stringify(routes));
  return { file, dir };
}

/**
 * Starts the real gateway in this process on a free loopback port with the given routes file
 * (an object written as YAML, or YAML text) and environment overrides.
 */
export async function startTestGateway(routes: unknown, env: Record<string, string> = {}): Promise<TestGateway> {
  const { file, dir } = await writeRoutesFile(routes);
  const capture = new LogCapture();
  const running = await startGateway(
    {
      PATH: process.env.PATH,
      HOST: '127.0.0.1',
      PORT: '0',
      JWT_SECRET: TEST_SECRET,
      AUTH_SERVICE_URL: 'http://127.0.0.1:9',
      LOG_LEVEL: 'INFO',
      // Tests send many requests from one address; rate-limit tests set their own budget.
      RATE_LIMIT_PER_MINUTE: '1000000',
      RATE_LIMIT_PER_ADDRESS_PER_MINUTE: '1000000',
      AUTH_FAILURES_PER_ADDRESS_PER_MINUTE: '1000000',
      ROUTES_FILE: file,
      // Each gateway keeps its audit spool in its own folder, removed with it.
      AUDIT_SPOOL_DIR: join(dir, 'audit-spool'),
      ...env,
    },
    capture,
  );
  return {
    ...running,
    url: `http://127.0.0.1:${running.port}`,
    logs: capture.lines,
    routesFile: file,
    async close() {
      await running.gateway.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A routes file with one service and the given routes (service defaults to "backend"). */
export function routesFor(upstreamUrl: string, routes: Array<Record<string, unknown>>): Record<string, unknown> {
  return {
    services: { backend: { instances: [upstreamUrl] } },
    routes: routes.map((r) => ({ service: 'backend', ...r })),
  };
}

/**
 * config/routes.yaml as shipped (its ${VAR} references resolved from the gateway's environment:
 * set AUTH_SERVICE_URL and CHAT_HISTORY_URL), with services and routes of the test's own added.
 */
export function shippedRoutes(extra: { services?: Record<string, unknown>; routes?: Array<Record<string, unknown>> } = {}): Record<string, unknown> {
  const shipped = parse(readFileSync(new URL('../../config/routes.yaml', import.meta.url), 'utf8')) as { services: Record<string, unknown>; routes: unknown[]; [key: string]: unknown };
  return { ...shipped, services: { ...shipped.services, ...extra.services }, routes: [...shipped.routes, ...(extra.routes ?? [])] };
}
