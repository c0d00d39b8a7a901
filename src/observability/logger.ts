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

let lastMs = 0;
let lastStamp = '';
/** At thousands of lines a second most share a millisecond: format each millisecond once. */
function timestamp(): string {
  const now = Date.now();
  if (now !== lastMs) {
    lastMs = now;
    lastStamp = `,"timestamp":"${new Date(now).toISOString()}"`;
  }
  return lastStamp;
}

export interface Loggers {
  /** General logging: anything may be passed, secrets are redacted by field name. */
  log: Logger;
  /**
   * Access lines only. Their fields come from an allow-list that never holds a secret, so they
   * skip the redaction pass, which costs several percent of a request's CPU time.
   */
  access: Logger;
}

/**
 * JSON lines in the spec's shape: `timestamp`, an upper-case `level`, `service`. Writes go
 * through an asynchronous buffered destination so that logging never blocks a request.
 */
export function createLoggers(level: string, destination?: DestinationStream): Loggers {
  const access = pino(
    {
      level,
      base: { service: 'api-gateway' },
      messageKey: 'message',
      timestamp,
      formatters: { level: (label) => ({ level: label.toUpperCase() }) },
    },
    destination ?? pino.destination({ dest: 1, sync: false, minLength: 4096 }),
  );
  // Lines are written in 4 KiB batches; a quiet gateway still shows them within a quarter second.
  if (destination === undefined) setInterval(() => access.flush(), 250).unref();
  const log = access.child({}, { redact: { paths: REDACT, censor: '[REDACTED]' } });
  return { log, access };
}
