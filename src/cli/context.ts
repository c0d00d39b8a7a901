import { Socket } from 'node:net';
import { IncomingMessage } from 'node:http';
import { compileConfig, type ChainBuilder, type CompiledConfig } from '../config/compile.js';
import { loadConfig, type GatewayConfig } from '../config/load.js';
import { createLoggers, type Logger } from '../observability/logger.js';
import { UpstreamRegistry } from '../upstream/registry.js';

/** The gateway's config as the process would load it: the environment, and ROUTES_FILE (or the file given). */
export function cliConfig(routesFile?: string): Promise<GatewayConfig> {
  return loadConfig(routesFile === undefined ? process.env : { ...process.env, ROUTES_FILE: routesFile });
}

/** A logger that says nothing: the commands print their own output. */
export function quietLogger(): Logger {
  return createLoggers('silent', { write: () => undefined }).log;
}

/**
 * The routes file compiled as at start-up (each route with the chain `chainFor` builds, none by
 * default), against its services made ready but never put live: no health check runs and no
 * connection is opened. `close` forgets them.
 */
export async function compiled(config: GatewayConfig, chainFor?: ChainBuilder): Promise<{ table: CompiledConfig; close(): void }> {
  const registry = new UpstreamRegistry(quietLogger());
  const plan = await registry.prepare(config.routes.services);
  try {
    return { table: compileConfig(config.routes, config.env, plan.services, chainFor), close: () => registry.discard(plan) };
  } catch (err) {
    registry.discard(plan);
    throw err;
  }
}

/** A request that never arrived on a socket: method, target and headers, with an empty body. */
export function syntheticRequest(method: string, target: string, headers: Record<string, string>): IncomingMessage {
  const req = new IncomingMessage(new Socket());
  req.method = method;
  req.url = target;
  req.httpVersion = '1.1';
  req.httpVersionMajor = 1;
  req.httpVersionMinor = 1;
  for (const [name, value] of Object.entries(headers)) {
    req.headers[name.toLowerCase()] = value;
    req.rawHeaders.push(name, value);
  }
  req.push(null);
  return req;
}

/** A JWT in printed output (its header always starts `eyJ`, `{"` encoded): its length, never its bytes. */
export function maskToken(value: string): string {
  return value.replace(/eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/g, (jwt) => `<a JWT of ${jwt.length} characters>`);
}
