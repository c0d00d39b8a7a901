import assert from 'node:assert/strict';
import { isIP } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor, type TestGateway, startTestGateway } from '../helpers/gateway.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { accessLine } from './support.js';

const SPOOF = '203.0.113.66';

const spoofed = {
  'x-forwarded-for': `${SPOOF}, 10.9.9.9`,
  'x-real-ip': SPOOF,
  forwarded: `for=${SPOOF};proto=https;host=evil.example`,
  'x-forwarded-host': 'evil.example',
  'x-forwarded-proto': 'https',
  'x-forwarded-port': '443',
  // CGI-style upstreams read these as HTTP_X_FORWARDED_FOR and HTTP_X_REAL_IP.
  'x-forwarded_for': SPOOF,
  'x-real_ip': SPOOF,
};

async function through(gw: TestGateway, upstream: TestUpstream, headers: Record<string, string | string[]>) {
  const before = upstream.received.length;
  const res = await request(`${gw.url}/public/whoami`, { headers });
  assert.equal(res.statusCode, 200);
  await res.body.dump();
  assert.equal(upstream.received.length, before + 1);
  const id = res.headers['x-request-id'] as string;
  return { seen: upstream.received.at(-1)!, log: await accessLine(gw, id) };
}

for (const [label, env] of [
  ['no trusted proxies', {}],
  ['trusted proxies that do not include the peer', { TRUSTED_PROXIES: '10.0.0.0/8,192.168.0.0/16' }],
] as const) {
  describe(`forwarding headers from an untrusted peer (${label})`, () => {
    let upstream: TestUpstream;
    let gw: TestGateway;

    before(async () => {
      upstream = await startUpstream();
      gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/public', auth: 'public' }]), env);
    });
    after(async () => {
      await gw.close();
      await upstream.close();
    });

    it('are replaced: the upstream and the access log see only the socket address', async () => {
      const { seen, log } = await through(gw, upstream, spoofed);
      assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
      assert.equal(seen.headers['x-forwarded-proto'], 'http');
      assert.equal(seen.headers['x-forwarded-host'], `127.0.0.1:${gw.port}`);
      assert.ok(seen.headers['x-real-ip'] === undefined || seen.headers['x-real-ip'] === '127.0.0.1');
      assert.equal(seen.headers.forwarded, undefined);
      assert.equal(seen.headers['x-forwarded-port'], undefined);
      const all = seen.rawHeaders.join('\n');
      assert.ok(!all.includes(SPOOF) && !all.includes('evil.example'), `a spoofed value reached the upstream:\n${all}`);
      assert.equal(log.ip_address, '127.0.0.1');
    });

    it('are replaced whatever their case or how many lines they take', async () => {
      const { seen, log } = await through(gw, upstream, { 'X-FORWARDED-FOR': [SPOOF, '198.51.100.1'], 'X-Real-Ip': SPOOF });
      assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
      assert.ok(!seen.rawHeaders.join('\n').includes(SPOOF));
      assert.equal(log.ip_address, '127.0.0.1');
    });
  });
}

describe('forwarding headers from a trusted proxy (TRUSTED_PROXIES=127.0.0.1)', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let gwTrustingLan: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    const routes = routesFor(upstream.url, [{ name: 'open', prefix: '/public', auth: 'public' }]);
    gw = await startTestGateway(routes, { TRUSTED_PROXIES: '127.0.0.1' });
    gwTrustingLan = await startTestGateway(routes, { TRUSTED_PROXIES: '127.0.0.1,10.0.0.0/8' });
  });
  after(async () => {
    await gw.close();
    await gwTrustingLan.close();
    await upstream.close();
  });

  it('appends the peer to the chain and logs the rightmost untrusted hop as the client', async () => {
    const { seen, log } = await through(gw, upstream, { 'x-forwarded-for': '198.51.100.7, 10.0.0.5' });
    assert.equal(seen.headers['x-forwarded-for'], '198.51.100.7, 10.0.0.5, 127.0.0.1');
    // 10.0.0.5 is not trusted here, so it is the last hop anyone vouches for; what it claims is not.
    assert.equal(log.ip_address, '10.0.0.5');
  });

  it('skips every trusted hop from the right', async () => {
    const { seen, log } = await through(gwTrustingLan, upstream, { 'x-forwarded-for': '203.0.113.9, 198.51.100.7, 10.0.0.5, 10.1.2.3' });
    assert.equal(seen.headers['x-forwarded-for'], '203.0.113.9, 198.51.100.7, 10.0.0.5, 10.1.2.3, 127.0.0.1');
    assert.equal(log.ip_address, '198.51.100.7');
  });

  it('reads a chain split over several X-Forwarded-For lines as one chain', async () => {
    const { seen, log } = await through(gwTrustingLan, upstream, { 'x-forwarded-for': ['203.0.113.9', '10.0.0.5'] });
    assert.equal(seen.headers['x-forwarded-for'], '203.0.113.9, 10.0.0.5, 127.0.0.1');
    assert.equal(log.ip_address, '203.0.113.9');
  });

  it('still drops X-Real-IP and Forwarded, which the gateway never vouches for', async () => {
    const { seen } = await through(gw, upstream, { 'x-forwarded-for': '198.51.100.7', 'x-real-ip': SPOOF, forwarded: `for=${SPOOF}` });
    assert.ok(seen.headers['x-real-ip'] === undefined || seen.headers['x-real-ip'] === '198.51.100.7');
    assert.equal(seen.headers.forwarded, undefined);
    assert.ok(!seen.rawHeaders.join('\n').includes(SPOOF));
  });

  const garbage: Array<[string, string]> = [
    ['a word', 'not-an-ip'],
    ['garbage after a real address', '198.51.100.7, <script>alert(1)</script>'],
    ['an address with a port', '198.51.100.7:4444'],
    ['a bracketed IPv6 address', '[2001:db8::1]'],
    ['empty hops', ' , ,, '],
    ['the obfuscated "unknown"', 'unknown'],
    ['an address with a zone-like suffix', '198.51.100.7%eth0'],
    ['a huge chain of junk', Array.from({ length: 400 }, (_, i) => `junk${i}`).join(',')],
    ['an integer address', '3325256711'],
  ];
  for (const [what, xff] of garbage) {
    it(`neither fails nor takes the client address from ${what}`, async () => {
      const { log } = await through(gw, upstream, { 'x-forwarded-for': xff });
      const ip = String(log.ip_address);
      assert.notEqual(isIP(ip), 0, `ip_address ${JSON.stringify(ip)} is not an address`);
      // The rightmost hop is not an address, so nothing left of it was written by a proxy we trust.
      assert.equal(ip, '127.0.0.1');
    });
  }
});
