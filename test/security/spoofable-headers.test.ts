import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { request } from 'undici';
import { SPOOFABLE_HEADERS } from '../../src/pipeline/spoofable-headers.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { read } from '../helpers/http.js';
import { startUpstream, type ReceivedRequest, type TestUpstream } from '../helpers/upstream.js';

/**
 * Headers upstream frameworks trust for the client's address, the original URL, the method or the
 * public prefix: whatever a client sends of them never reaches the upstream with its value.
 */

/** The list's exact names (less X-Request-ID, whose well-formed value the gateway adopts by design), and names of the prefixed families. */
const NAMES = [
  ...SPOOFABLE_HEADERS.filter((n) => n !== 'x-request-id'),
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-forwarded-port',
  'x-forwarded-prefix',
  'x-forwarded-server',
  'x-forwarded-ssl',
  'x-forwarded-scheme',
  'x-forwarded-uri',
  'x-user-id',
  'x-user-role',
  'x-phi-access-level',
];

/** What the upstream got under a name, whatever its case. */
function valuesAt(seen: ReceivedRequest, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) if (seen.rawHeaders[i]!.toLowerCase() === name) out.push(seen.rawHeaders[i + 1]!);
  return out;
}

const casing = (name: string) => fc.array(fc.boolean(), { minLength: name.length, maxLength: name.length }).map((up) => [...name].map((c, i) => (up[i] ? c.toUpperCase() : c)).join(''));

describe('spoofable headers never reach an upstream with a client value', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'open', prefix: '/open', auth: 'public' },
        { name: 'prefixed', prefix: '/app', auth: 'public', passHeaders: ['X-Forwarded-Prefix'] },
      ]),
    );
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('in any letter case, repeated, and listed in Connection or not (property)', async () => {
    const sent = fc.record({
      headers: fc.uniqueArray(fc.constantFrom(...NAMES), { minLength: 1, maxLength: 8 }).chain((names) =>
        fc.tuple(...names.map((n) => fc.tuple(fc.constant(n), casing(n), fc.integer({ min: 1, max: 3 })))),
      ),
      listInConnection: fc.boolean(),
      marker: fc.integer({ min: 0, max: 1e9 }),
    });
    await fc.assert(
      fc.asyncProperty(sent, async ({ headers, listInConnection, marker }) => {
        const raw: string[] = [];
        for (const [name, spelled, times] of headers) for (let k = 0; k < times; k++) raw.push(spelled, `spoof ${marker} ${name} ${k}`);
        if (listInConnection) raw.push('Connection', headers.map(([, spelled]) => spelled).join(', '));
        const before = upstream.received.length;
        const res = await read(request(`${gw.url}/open/x`, { headers: raw }));
        assert.equal(res.statusCode, 200, res.text);
        assert.equal(upstream.received.length, before + 1);
        const seen = upstream.received.at(-1)!;
        for (const [name] of headers) {
          for (const value of valuesAt(seen, name)) assert.ok(!value.includes(`spoof ${marker}`), `${name} reached the upstream as ${value}`);
        }
      }),
      { numRuns: 40 },
    );
  });

  it("a route that names one in passHeaders gets the client's value of that one only", async () => {
    const res = await read(request(`${gw.url}/app/x`, { headers: { 'x-forwarded-prefix': '/portal', 'x-original-url': '/admin', 'x-forwarded-server': 'evil' } }));
    assert.equal(res.statusCode, 200);
    const seen = upstream.received.at(-1)!;
    assert.deepEqual(valuesAt(seen, 'x-forwarded-prefix'), ['/portal']);
    assert.deepEqual(valuesAt(seen, 'x-original-url'), []);
    assert.deepEqual(valuesAt(seen, 'x-forwarded-server'), []);
  });
});
