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
let lastIso = '';
/** At thousands of lines a second most share a millisecond: format each millisecond once. */
export function isoTimestamp(): string {
  const now = Date.now();
  if (now !== lastMs) {
    lastMs = now;
    lastIso = new Date(now).toISOString();
  }
  return lastIso;
}

function timestamp(): string {
  return `,"timestamp":"${isoTimestamp()}"`;
}

/** Where access lines go: the same stream as every other line, and which levels are on. */
export interface AccessSink {
  write(line: string): unknown;
  enabled: { debug: boolean; info: boolean; warn: boolean };
  /** Hand lines over in batches (see access-log.ts); off for in-memory destinations in tests. */
  batch: boolean;
}

export interface Loggers {
  /** General logging: anything may be passed, secrets are redacted by field name. */
  log: Logger;
  /** Access lines, written by access-log.ts straight to the stream (see there why). */
  access: AccessSink;
}

/**
 * JSON lines in the spec's shape: `timestamp`, an upper-case `level`, `service`. Writes go
 * through an asynchronous destination in 12 KiB batches, so that logging never blocks a request
 * and costs few writes; a quiet gateway still shows its lines within a quarter second (flushed
 * without fsync).
 */
export function createLoggers(level: string, destination?: DestinationStream): Loggers {
  const stream = destination ?? pino.destination({ dest: 1, sync: false, minLength: 12288, periodicFlush: 250 });
  const log = pino(
    {
      level,
      base: { service: 'api-gateway' },
      messageKey: 'message',
      timestamp,
      formatters: { level: (label) => ({ level: label.toUpperCase() }) },
      redact: { paths: REDACT, censor: '[REDACTED]' },
    },
    stream,
  );
  return {
    log,
    access: {
      write: (line) => stream.write(line),
      enabled: { debug: log.isLevelEnabled('debug'), info: log.isLevelEnabled('info'), warn: log.isLevelEnabled('warn') },
      batch: destination === undefined,
    },
  };
}
