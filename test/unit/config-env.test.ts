import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseEnv, type Env } from '../../src/config/env.js';
import { ConfigError } from '../../src/config/load.js';
import { startGateway } from '../../src/start.js';

const SECRET = 'SECRET-CANARY-do-not-print-0123456789abcdef';

function ok(source: Record<string, string>): Env {
  const result = parseEnv(source);
  if ('errors' in result) assert.fail(`unexpected errors: ${result.errors.join('; ')}`);
  return result.env;
}

function errors(source: Record<string, string>): string[] {
  const result = parseEnv(source);
  assert.ok('errors' in result, `expected ${JSON.stringify(source)} to be refused`);
  return result.errors;
}

describe('parseEnv: the spec\'s defaults', () => {
  const env = ok({ JWT_SECRET: SECRET });

  it('PORT 8090', () => assert.equal(env.PORT, 8090));
  it('AUTH_SERVICE_URL http://auth-rbac:8080', () => assert.equal(env.AUTH_SERVICE_URL, 'http://auth-rbac:8080'));
  it('JWT_EXPIRES_IN 7200', () => assert.equal(env.JWT_EXPIRES_IN, 7200));
  it('RATE_LIMIT_PER_MINUTE 100', () => assert.equal(env.RATE_LIMIT_PER_MINUTE, 100));
  it('anonymous traffic and failed authentications have budgets of their own per client address', () => {
    assert.equal(env.RATE_LIMIT_PER_ADDRESS_PER_MINUTE, 1000);
    assert.equal(env.AUTH_FAILURES_PER_ADDRESS_PER_MINUTE, 60);
  });
  it('CLIENT_BODY_TIMEOUT_MS 30000', () => assert.equal(env.CLIENT_BODY_TIMEOUT_MS, 30_000));
  it('CORS_ALLOWED_ORIGINS *', () => assert.deepEqual(env.CORS_ALLOWED_ORIGINS, ['*']));
  it('LOG_LEVEL INFO, as pino names it', () => assert.equal(env.LOG_LEVEL, 'info'));
  it('ENABLE_METRICS true', () => assert.equal(env.ENABLE_METRICS, true));
  it('no TLS files and no trusted proxies', () => {
    assert.equal(env.TLS_CERT_FILE, undefined);
    assert.equal(env.TLS_KEY_FILE, undefined);
    assert.deepEqual(env.TRUSTED_PROXIES, []);
  });
  it('an empty variable counts as unset', () => {
    const blank = ok({ JWT_SECRET: SECRET, PORT: '', LOG_LEVEL: '', ENABLE_METRICS: '' });
    assert.equal(blank.PORT, 8090);
    assert.equal(blank.LOG_LEVEL, 'info');
    assert.equal(blank.ENABLE_METRICS, true);
  });
});

describe('parseEnv: values are read as documented', () => {
  it('LOG_LEVEL maps the spec\'s upper-case names to pino levels, in any case', () => {
    for (const [given, level] of [['DEBUG', 'debug'], ['INFO', 'info'], ['WARN', 'warn'], ['ERROR', 'error'], ['debug', 'debug'], [' Warn ', 'warn']]) {
      assert.equal(ok({ JWT_SECRET: SECRET, LOG_LEVEL: given! }).LOG_LEVEL, level);
    }
  });

  it('ENABLE_METRICS accepts the usual spellings of true and false', () => {
    for (const v of ['true', 'TRUE', '1', 'yes']) assert.equal(ok({ JWT_SECRET: SECRET, ENABLE_METRICS: v }).ENABLE_METRICS, true);
    for (const v of ['false', 'False', '0', 'no']) assert.equal(ok({ JWT_SECRET: SECRET, ENABLE_METRICS: v }).ENABLE_METRICS, false);
  });

  it('CORS_ALLOWED_ORIGINS is the comma-separated list from the spec\'s production example', () => {
    const env = ok({ JWT_SECRET: SECRET, CORS_ALLOWED_ORIGINS: 'https://app.healthcare.com, https://admin.healthcare.com' });
    assert.deepEqual(env.CORS_ALLOWED_ORIGINS, ['https://app.healthcare.com', 'https://admin.healthcare.com']);
  });

  it('RATE_LIMIT_PER_MINUTE, PORT and JWT_EXPIRES_IN are numbers', () => {
    const env = ok({ JWT_SECRET: SECRET, RATE_LIMIT_PER_MINUTE: '60', PORT: '9000', JWT_EXPIRES_IN: '900' });
    assert.equal(env.RATE_LIMIT_PER_MINUTE, 60);
    assert.equal(env.PORT, 9000);
    assert.equal(env.JWT_EXPIRES_IN, 900);
  });

  it('URLs lose a trailing slash so that paths join cleanly', () => {
    assert.equal(ok({ JWT_SECRET: SECRET, AUTH_SERVICE_URL: 'http://localhost:8080/' }).AUTH_SERVICE_URL, 'http://localhost:8080');
  });

  it('ignores variables it does not know', () => {
    assert.equal(ok({ JWT_SECRET: SECRET, SOMETHING_ELSE: 'x' }).PORT, 8090);
  });
});

describe('parseEnv: JWT_SECRET', () => {
  it('is required, and the error says so', () => {
    const errs = errors({});
    assert.equal(errs.length, 1);
    assert.match(errs[0]!, /^JWT_SECRET: .*required/);
  });

  it('is refused when too short, without echoing it', () => {
    const short = 'SHORT-CANARY-1234';
    const errs = errors({ JWT_SECRET: short });
    assert.match(errs.join('\n'), /^JWT_SECRET: /m);
    assert.ok(!errs.join('\n').includes(short), 'the secret was echoed');
  });

  it('is never echoed when other variables are wrong', () => {
    const errs = errors({ JWT_SECRET: SECRET, PORT: 'x', LOG_LEVEL: 'LOUD', TRUSTED_PROXIES: 'nope' });
    assert.equal(errs.length, 3);
    assert.ok(!errs.join('\n').includes(SECRET));
    assert.ok(!errs.join('\n').includes(SECRET.slice(0, 13)));
  });

  it('REDIS_URL, which may carry a password, is not echoed either', () => {
    const errs = errors({ JWT_SECRET: SECRET, REDIS_URL: 'http://:REDIS-PASSWORD-CANARY@redis:6379' });
    assert.match(errs[0]!, /^REDIS_URL: /);
    assert.ok(!errs.join('\n').includes('REDIS-PASSWORD-CANARY'));
  });
});

describe('parseEnv: a bad value names its variable', () => {
  const cases: Array<[string, string]> = [
    ['PORT', 'eighty'],
    ['PORT', '65536'],
    ['PORT', '-1'],
    ['PORT', '80.5'],
    ['AUTH_SERVICE_URL', 'auth-rbac:8080'],
    ['AUTH_SERVICE_URL', 'ftp://auth-rbac'],
    ['JWT_EXPIRES_IN', '7201'],
    ['JWT_EXPIRES_IN', '0'],
    ['JWT_EXPIRES_IN', '2h'],
    ['RATE_LIMIT_PER_MINUTE', '0'],
    ['RATE_LIMIT_PER_MINUTE', 'lots'],
    ['CORS_ALLOWED_ORIGINS', 'https://app.healthcare.com/path'],
    ['CORS_ALLOWED_ORIGINS', 'app.healthcare.com'],
    ['LOG_LEVEL', 'VERBOSE'],
    ['ENABLE_METRICS', 'maybe'],
    ['TRUSTED_PROXIES', '10.0.0.0/33'],
    ['TRUSTED_PROXIES', 'proxy.internal'],
  ];
  for (const [name, value] of cases) {
    it(`${name}=${value}`, () => {
      const errs = errors({ JWT_SECRET: SECRET, [name]: value });
      assert.equal(errs.length, 1, errs.join('; '));
      assert.ok(errs[0]!.startsWith(`${name}: `), errs[0]);
      // The offending value is shown for non-secret variables, so the operator sees what was read.
      assert.ok(errs[0]!.includes(value.trim()), errs[0]);
    });
  }

  it('reports every bad variable at once', () => {
    const errs = errors({ JWT_SECRET: SECRET, PORT: 'x', JWT_EXPIRES_IN: '99999', ENABLE_METRICS: 'perhaps' });
    assert.deepEqual(errs.map((e) => e.split(':')[0]).sort(), ['ENABLE_METRICS', 'JWT_EXPIRES_IN', 'PORT']);
  });

  it('TLS_CERT_FILE and TLS_KEY_FILE come together', () => {
    const errs = errors({ JWT_SECRET: SECRET, TLS_CERT_FILE: '/etc/certs/api-gateway.crt' });
    assert.ok(errs[0]!.startsWith('TLS_KEY_FILE: '), errs[0]);
  });
});

describe('parseEnv: JWT key rotation variables', () => {
  const PREVIOUS = 'PREVIOUS-CANARY-do-not-print-0123456789abcdef';

  it('JWT_SECRET of 31 bytes is refused, 32 bytes (counted as UTF-8) is accepted', () => {
    const errs = errors({ JWT_SECRET: 'x'.repeat(31) });
    assert.equal(errs.length, 1, errs.join('; '));
    assert.ok(errs[0]!.startsWith('JWT_SECRET: '), errs[0]);
    assert.ok(!errs[0]!.includes('x'.repeat(31)), 'the secret was echoed');
    assert.equal(ok({ JWT_SECRET: 'x'.repeat(32) }).JWT_SECRET, 'x'.repeat(32));
    // 16 characters, 32 bytes: the length that matters to HMAC is in bytes.
    assert.equal(ok({ JWT_SECRET: 'é'.repeat(16) }).JWT_SECRET, 'é'.repeat(16));
    assert.match(errors({ JWT_SECRET: 'é'.repeat(15) })[0]!, /^JWT_SECRET: /);
  });

  it('a gateway with a short JWT_SECRET refuses to start, naming the variable and not the value', async () => {
    const short = 'START-CANARY-123';
    await assert.rejects(startGateway({ JWT_SECRET: short, HOST: '127.0.0.1', PORT: '0', ROUTES_FILE: '/nonexistent/routes.yaml' }), (err: unknown) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.deepEqual(err.problems.map((p) => p.split(':')[0]), ['JWT_SECRET']);
      assert.ok(!err.message.includes(short), 'the secret was echoed');
      return true;
    });
  });

  it('JWT_PREVIOUS_SECRET without JWT_PREVIOUS_SECRET_EXPIRES_AT is refused, naming the missing variable', () => {
    const errs = errors({ JWT_SECRET: SECRET, JWT_PREVIOUS_SECRET: PREVIOUS });
    assert.equal(errs.length, 1, errs.join('; '));
    assert.ok(errs[0]!.startsWith('JWT_PREVIOUS_SECRET_EXPIRES_AT: '), errs[0]);
    assert.ok(!errs.join('\n').includes(PREVIOUS), 'the previous secret was echoed');
    assert.ok(!errs.join('\n').includes(SECRET), 'the secret was echoed');
  });

  it('a short JWT_PREVIOUS_SECRET is refused without echoing it', () => {
    const short = 'PREV-SHORT-CANARY';
    const errs = errors({ JWT_SECRET: SECRET, JWT_PREVIOUS_SECRET: short, JWT_PREVIOUS_SECRET_EXPIRES_AT: '2026-12-01T00:00:00Z' });
    assert.equal(errs.length, 1, errs.join('; '));
    assert.ok(errs[0]!.startsWith('JWT_PREVIOUS_SECRET: '), errs[0]);
    assert.ok(!errs[0]!.includes(short), 'the previous secret was echoed');
  });

  it('JWT_PREVIOUS_SECRET_EXPIRES_AT that is not a time is refused, naming it', () => {
    const errs = errors({ JWT_SECRET: SECRET, JWT_PREVIOUS_SECRET: PREVIOUS, JWT_PREVIOUS_SECRET_EXPIRES_AT: 'next tuesday' });
    assert.equal(errs.length, 1, errs.join('; '));
    assert.ok(errs[0]!.startsWith('JWT_PREVIOUS_SECRET_EXPIRES_AT: '), errs[0]);
    assert.ok(!errs[0]!.includes(PREVIOUS));
  });

  it('a complete rotation is read: the end of the overlap in milliseconds, the kids as given', () => {
    const env = ok({ JWT_SECRET: SECRET, JWT_KID: 'k-new', JWT_PREVIOUS_SECRET: PREVIOUS, JWT_PREVIOUS_KID: 'k-old', JWT_PREVIOUS_SECRET_EXPIRES_AT: '2026-12-01T00:00:00Z' });
    assert.equal(env.JWT_PREVIOUS_SECRET, PREVIOUS);
    assert.equal(env.JWT_PREVIOUS_SECRET_EXPIRES_AT, Date.UTC(2026, 11, 1));
    assert.equal(env.JWT_KID, 'k-new');
    assert.equal(env.JWT_PREVIOUS_KID, 'k-old');
  });
});
