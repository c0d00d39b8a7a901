import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** Field names whose values are secrets wherever they appear in a log object. */
const REDACT = [
  'authorization',
  'cookie',
  'password',
  'token',
  'access_token',
  'refresh_token',
  'secret',
  '*.authorization',
  '*.cookie',
  '*.password',
  '*.token',
  '*.access_token',
  '*.refresh_token',
  '*.secret',
  'headers.authorization',
  'headers.cookie',
  'headers["set-cookie"]',
];

/**
 * JSON lines in the spec's shape: `timestamp`, an upper-case `level`, `service`. Writes go
 * through an asynchronous buffered destination so that logging never blocks a request.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const logger = pino(
    {
      level,
      base: { service: 'api-gateway' },
      messageKey: 'message',
      timestamp: () => `,"timestamp":"${new Date().toISOString()}"`,
      formatters: { level: (label) => ({ level: label.toUpperCase() }) },
      redact: { paths: REDACT, censor: '[REDACTED]' },
    },
    destination ?? pino.destination({ dest: 1, sync: false, minLength: 4096 }),
  );
  // Lines are written in 4 KiB batches; a quiet gateway still shows them within a quarter second.
  if (destination === undefined) setInterval(() => logger.flush(), 250).unref();
  return logger;
}
