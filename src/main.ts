import cluster from 'node:cluster';
import { ConfigError, loadConfig } from './config/load.js';
import { createLoggers } from './observability/logger.js';
import { runPrimary } from './workers.js';
import { startGateway } from './start.js';

/**
 * Process entry. A config error stops the process with exit code 1 and a message naming the
 * field; SIGTERM/SIGINT turn readiness false, refuse new connections, let in-flight requests
 * finish (up to SHUTDOWN_TIMEOUT_MS) and exit 0.
 */
/** A config error ends the process with its message and exit code 1; anything else propagates. */
function exitOnConfigError(err: unknown): never {
  if (err instanceof ConfigError) {
    process.stderr.write(`api-gateway: ${err.message}\n`);
    process.exit(1);
  }
  throw err;
}

async function main(): Promise<void> {
  if (cluster.isPrimary) {
    // Checked once here, so that a bad config stops the process before any worker starts.
    const config = await loadConfig(process.env).catch(exitOnConfigError);
    if (config.env.WORKERS > 1) {
      runPrimary(config.env.WORKERS, config.env.SHUTDOWN_TIMEOUT_MS, createLoggers(config.env.LOG_LEVEL).log);
      return;
    }
  }
  const { gateway, config, logger } = await startGateway(process.env).catch(exitOnConfigError);
  const timeoutMs = config.env.SHUTDOWN_TIMEOUT_MS;

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, timeout_ms: timeoutMs }, 'shutting down: finishing in-flight requests');
    const deadline = setTimeout(() => {
      logger.error('in-flight requests did not finish before SHUTDOWN_TIMEOUT_MS; closing them');
      logger.flush();
      process.exit(1);
    }, timeoutMs);
    deadline.unref();
    gateway
      .close()
      .then(() => {
        clearTimeout(deadline);
        logger.info('stopped');
        logger.flush();
        process.exitCode = 0;
        // A worker's channel to the primary would keep it alive: closing it lets the process end.
        if (cluster.isWorker) cluster.worker?.disconnect();
      })
      .catch((err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        logger.flush();
        process.exit(1);
      });
  };
  // SIGHUP reloads the routes file; the reloader logs what it did or why it refused.
  process.on('SIGHUP', () => void gateway.reload());
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  process.stderr.write(`api-gateway: failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
