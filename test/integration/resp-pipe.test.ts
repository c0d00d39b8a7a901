import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { RespPipe, targetOf, type LuaScript, type RespPipeOptions } from '../../src/stores/resp-pipe.js';
import { inspectRedis, startRedis, type TestRedis } from '../helpers/redis.js';
import { stallEventLoop } from '../helpers/stall.js';

const script = (body: string): LuaScript => ({ body, sha: createHash('sha1').update(body).digest('hex') });
/** Echoes its key and argument, and counts its calls in Redis. */
const ECHO = script(`redis.call('INCR', 'pipe:calls') return {KEYS[1], ARGV[1], tonumber(ARGV[2]), false}`);
const BIG = script(`return string.rep('x', tonumber(ARGV[1]))`);

/** A connected pipe for the test's body, closed after it whatever happens. */
async function withPipe(url: string, options: RespPipeOptions, body: (pipe: RespPipe) => Promise<void>): Promise<void> {
  const pipe = new RespPipe(targetOf(url), options);
  try {
    await pipe.whenReady();
    await body(pipe);
  } finally {
    pipe.close();
  }
}

describe('the request-path Redis connection (resp-pipe)', () => {
  let redis: TestRedis;
  let inspect: Redis;
  before(async () => {
    redis = await startRedis();
    inspect = inspectRedis(redis);
  });
  after(async () => {
    inspect.disconnect();
    await redis.stop();
  });

  it('sends a script Redis does not know in full once, then by hash; every reply reaches its own caller', async () => {
    await inspect.script('FLUSH');
    await withPipe(redis.url, { connectTimeoutMs: 1_000 }, async (pipe) => {
      // Issued in one turn: they share writes, and each gets its own answer back in order.
      const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => pipe.run(ECHO, [`key-${i}`], [`arg-${i}`, String(i)])));
      replies.forEach((r, i) => assert.deepEqual(r, [`key-${i}`, `arg-${i}`, i, null]));
      assert.deepEqual(await inspect.script('EXISTS', ECHO.sha), [1], 'Redis keeps the script after the full send');
      assert.equal(await inspect.get('pipe:calls'), '200');
    });
  });

  it('reads a reply that arrives in many pieces', async () => {
    await withPipe(redis.url, { connectTimeoutMs: 1_000 }, async (pipe) => {
      const [big, small] = await Promise.all([pipe.run(BIG, [], ['300000']), pipe.run(ECHO, ['after'], ['big', '1'])]);
      assert.equal(big, 'x'.repeat(300_000));
      assert.deepEqual(small, ['after', 'big', 1, null]);
    });
  });

  it('fails at once while Redis is down, fails what was waiting when the connection drops, and comes back by itself', async () => {
    await withPipe(redis.url, { connectTimeoutMs: 500 }, async (pipe) => {
      const inFlight = pipe.run(BIG, [], ['1000000']).then(
        () => 'answered',
        (err: Error) => err.message,
      );
      await redis.stop();
      const outcome = await inFlight;
      assert.ok(outcome === 'answered' || /lost|closed/.test(outcome), outcome);
      await assert.rejects(pipe.run(ECHO, ['k'], ['v', '1']), /not connected/);
      await redis.start();
      await pipe.whenReady();
      assert.deepEqual(await pipe.run(ECHO, ['k'], ['v', '2']), ['k', 'v', 2, null]);
    });
  });

  it('a stuck server: waiting calls are bounded, and fail once the oldest has waited too long', async () => {
    await withPipe(redis.url, { connectTimeoutMs: 500, maxPending: 3, stuckAfterMs: 300 }, async (pipe) => {
      redis.freeze();
      try {
        const waiting = [1, 2, 3].map((i) => pipe.run(ECHO, ['k'], ['v', String(i)]));
        await assert.rejects(pipe.run(ECHO, ['k'], ['v', '4']), /3 redis commands are waiting/);
        for (const w of waiting) await assert.rejects(w, /lost/);
      } finally {
        redis.thaw();
      }
    });
    await withPipe(redis.url, { connectTimeoutMs: 1_000 }, async (pipe) => {
      assert.deepEqual(await pipe.run(ECHO, ['k'], ['v', '5']), ['k', 'v', 5, null]);
    });
  });

  it('a stalled event loop is not a stuck server: a command the stall kept from leaving is timed from its write, and answered', async () => {
    await withPipe(redis.url, { connectTimeoutMs: 500, stuckAfterMs: 100 }, async (pipe) => {
      for (let round = 0; round < 3; round++) {
        const answer = pipe.run(ECHO, ['k'], ['v', String(round)]);
        // The watchdog falls due during the stall; the command is written only after it.
        stallEventLoop(400);
        assert.deepEqual(await answer, ['k', 'v', round, null], `round ${round}`);
      }
    });
  });
});

describe('resp-pipe with a password and a database number in the URL', () => {
  let redis: TestRedis;
  before(async () => {
    redis = await startRedis(['--requirepass', 'pipe-secret']);
  });
  after(() => redis.stop());

  it('authenticates and selects the database before any script runs', async () => {
    const url = `redis://:pipe-secret@127.0.0.1:${redis.port}/3`;
    const check = new Redis(url, { maxRetriesPerRequest: 1 });
    try {
      await withPipe(url, { connectTimeoutMs: 1_000 }, async (pipe) => {
        await pipe.run(ECHO, ['k'], ['v', '1']);
      });
      assert.equal(await check.get('pipe:calls'), '1', 'the call landed in database 3');
      await check.select(0);
      assert.equal(await check.get('pipe:calls'), null);
    } finally {
      check.disconnect();
    }
  });

  it('a wrong password never becomes ready: calls fail at once', async () => {
    let told: (problem: string) => void = () => undefined;
    const problem = new Promise<string>((resolve) => (told = resolve));
    const pipe = new RespPipe(targetOf(`redis://:wrong@127.0.0.1:${redis.port}`), { connectTimeoutMs: 500, onProblem: (p) => told(p) });
    try {
      assert.match(await problem, /refused the connection: WRONGPASS/);
      await assert.rejects(pipe.run(ECHO, ['k'], ['v', '1']), /not connected/);
      assert.equal(pipe.connected, false);
    } finally {
      pipe.close();
    }
  });
});
