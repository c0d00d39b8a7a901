import type { DestinationStream } from 'pino';
import { buildGateway, type Gateway } from './app.js';
import { loadConfig, type GatewayConfig } from './config/load.js';
import { createLoggers, type Logger } from './observability/logger.js';
import { VERSION } from './version.js';

export interface RunningGateway {
  gateway: Gateway;
  config: GatewayConfig;
  logger: Logger;
  /** The port actually bound (PORT=0 picks a free one). */
  port: number;
}

/** Loads and validates the config from an environment, builds the gateway and listens. */
export async function startGateway(source: NodeJS.ProcessEnv, logDestination?: DestinationStream): Promise<RunningGateway> {
  const config = await loadConfig(source);
  const { env } = config;
  const loggers = createLoggers(env.LOG_LEVEL, logDestination);
  const logger = loggers.log;
  if (env.CORS_ALLOWED_ORIGINS.includes('*') && env.NODE_ENV === 'production') {
    logger.warn('CORS_ALLOWED_ORIGINS is * in production; restrict it to known origins');
  }
  if (!env.TLS_CERT_FILE && env.NODE_ENV === 'production') {
    logger.warn('TLS ends at a proxy in front of the gateway (TLS_TERMINATED_BY_PROXY): traffic between it and the gateway is plain HTTP');
  }
  const gateway = await buildGateway(config, loggers);
  try {
    await new Promise<void>((resolve, reject) => {
      gateway.server.once('error', reject);
      gateway.server.listen(env.PORT, env.HOST, () => {
        gateway.server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    // Nothing it opened (the audit spool's lock, health checks, Redis) may outlive a failed start.
    await gateway.close().catch(() => undefined);
    throw err;
  }
  const address = gateway.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : env.PORT;
  logger.info({ version: VERSION, port, routes: config.routes.routes.length, routes_file: config.routesFile }, 'api-gateway listening');
  return { gateway, config, logger, port };
}
