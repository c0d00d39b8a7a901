import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setImmediate as nextCheckPhase } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { StoreTimeout, within } from '../../src/stores/command-deadline.js';
import { RespPipe, targetOf } from '../../src/stores/resp-pipe.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { stallEventLoop as stall } from '../helpers/stall.js';

/**
 * The Redis command timeout against a real Redis, with the event loop stalled on purpose (a
 * synchronous busy wait, as a long collection or a burst of work would stall it). The timeout
 * must catch a Redis that does not answer, and only that.
 */

const TIMEOUT_MS = 30;
const STALL_MS = 150;

describe('the Redis command timeout across event-loop stalls (command-deadline)', () => {
  let redis: TestRedis;
  let frozen: TestRedis;
  let pipe: RespPipe;
  let pipeToFrozen: RespPipe;
  let client: Redis;

  before(async () => {
    [redis, frozen] = await Promise.all([startRedis(), startRedis()]);
    pipe = new RespPipe(targetOf(redis.url), { connectTimeoutMs: 1_000 });
    pipeToFrozen = new RespPipe(targetOf(frozen.url), { connectTimeoutMs: 1_000 });
    // As the gateway's general client is made: auto-pipelined (written in the check phase) and
    // its own timeout only a backstop.
    client = new Redis(redis.url, { enableAutoPipelining: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: 10_000 });
    await Promise.all([pipe.whenReady(), pipeToFrozen.whenReady(), new Promise((resolve) => client.once('ready', resolve))]);
  });
  after(async () => {
    frozen?.thaw();
    pipe?.close();
    pipeToFrozen?.close();
    client?.disconnect();
    await Promise.all([redis?.stop(), frozen?.stop()]);
  });

  it('a command whose write a stall delayed is timed from its write: the answer counts (request path pipe and general client)', async () => {
    for (let round = 0; round < 8; round++) {
      const viaPipe = within(pipe.command(['PING']), TIMEOUT_MS);
      const viaClient = within(client.echo(`round ${round}`), TIMEOUT_MS);
      // The stall falls between the call and the turn's write: by the time Redis sees the
      // commands, a deadline counted from the call would long have passed.
      stall(STALL_MS);
      assert.equal(await viaPipe, 'PONG', `round ${round}`);
      assert.equal(await viaClient, `round ${round}`, `round ${round}`);
    }
  });

  it('a reply that arrived during a stall after the write is read before the verdict', async () => {
    for (let round = 0; round < 8; round++) {
      const answer = within(pipe.command(['ECHO', `late ${round}`]), TIMEOUT_MS);
      // Written (the check phase has run), then the loop stalls while Redis answers.
      await nextCheckPhase();
      await nextCheckPhase();
      stall(STALL_MS);
      assert.equal(await answer, `late ${round}`, `round ${round}`);
    }
  });

  it('a Redis that does not answer is a timeout, alongside answers in the same turn', async () => {
    frozen.freeze();
    try {
      const lost = within(pipeToFrozen.command(['PING']), TIMEOUT_MS);
      const answered = within(pipe.command(['PING']), TIMEOUT_MS);
      await assert.rejects(lost, (err: unknown) => err instanceof StoreTimeout && /no answer within 30 ms/.test((err as Error).message));
      assert.equal(await answered, 'PONG');
      // Also when the loop stalls past the deadline: nothing came, so nothing is read.
      const stillLost = within(pipeToFrozen.command(['PING']), TIMEOUT_MS);
      await nextCheckPhase();
      stall(STALL_MS);
      await assert.rejects(stillLost, StoreTimeout);
    } finally {
      frozen.thaw();
    }
  });

  it('an error from Redis passes through as itself, not as a timeout', async () => {
    await assert.rejects(within(pipe.command(['NOSUCHCOMMAND']), TIMEOUT_MS), (err: unknown) => !(err instanceof StoreTimeout) && /unknown command/i.test((err as Error).message));
  });
});
