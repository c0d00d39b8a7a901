import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { keyPart, keys, unescapeKeyPart } from '../../src/stores/access-store.js';
import { hashSlot } from '../../src/stores/hash-slot.js';

/**
 * On a Redis Cluster one script reads every key of a request, so they must share a hash slot:
 * each carries the user as a hash tag. An id may hold any character; none may end the tag early
 * or let one user's keys land in another's tag.
 */
describe('key layout for Redis Cluster', () => {
  // A verified sub is 1 to 128 printable characters (jwt.ts); the revocation endpoint takes any non-empty id.
  const ids = ['7c9e6679-7425-40de-944b-e07fc1f90ae7', 'alice', 'a}b', '{x}', '}{', 'ip:10.0.0.1', 'x:y%z', 'ü-名前'];

  it('every key of one request shares the hash slot of the user\'s rate-limit key', () => {
    for (const id of ids) {
      const user = keyPart(id);
      const slot = hashSlot(keys.rate(user));
      for (const key of [keys.routeRate('reports', user), keys.revokedToken(id, 'jti-1'), keys.revokedToken(id, '{jti}'), keys.revokedUser(id), keys.session(id, 'sid:1')]) {
        assert.equal(hashSlot(key), slot, `${key} and ${keys.rate(user)} (user ${JSON.stringify(id)})`);
      }
    }
  });

  it('the tag is the whole (escaped) user id: a brace in an id cannot make two users share a tag', () => {
    assert.equal(keys.rate(keyPart('a}b')), 'rate_limit:{a%7Db}');
    assert.equal(keys.revokedUser('{x}'), 'revoked:user:{%7Bx%7D}');
    const tags = new Set(ids.map((id) => /\{([^}]*)\}/.exec(keys.revokedUser(id))![1]));
    assert.equal(tags.size, ids.length);
  });

  it('keyPart and unescapeKeyPart are inverses', () => {
    for (const id of ids) assert.equal(unescapeKeyPart(keyPart(id)), id);
  });

  it('matches Redis for its documented examples', () => {
    // CLUSTER KEYSLOT answers, taken from redis-server 7.
    assert.equal(hashSlot('123456789'), 12739);
    assert.equal(hashSlot('foo'), 12182);
    assert.equal(hashSlot('{user1000}.following'), 3443);
    assert.equal(hashSlot('rate_limit:{ü}'), 9552);
    assert.equal(hashSlot('a{}b'), 13694, 'an empty tag: the whole key is hashed');
  });
});
