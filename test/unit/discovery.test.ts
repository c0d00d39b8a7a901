import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { serviceSchema } from '../../src/upstream/service-schema.js';
import { createLoggers } from '../../src/observability/logger.js';
import { DnsDiscovery } from '../../src/upstream/discovery.js';
import { UpstreamService } from '../../src/upstream/service.js';
import { until } from '../helpers/poll.js';
import { LogCapture } from '../helpers/gateway.js';

const FAILED = 'service discovery failed; keeping the last known instances';

/** A resolver the test answers: a list of addresses, or an error to throw. */
class FakeResolver {
  answer: string[] | Error = [];
  readonly asked: string[] = [];
  readonly resolve = async (host: string): Promise<string[]> => {
    this.asked.push(host);
    if (this.answer instanceof Error) throw this.answer;
    return [...this.answer];
  };
}

function setup(discovery: Record<string, unknown> = {}) {
  const capture = new LogCapture();
  const logger = createLoggers('INFO', capture).log;
  const config = serviceSchema.parse({ discovery: { host: 'chat-history-headless.platform.svc.cluster.local', port: 8002, ...discovery } });
  const service = new UpstreamService('chat-history', logger);
  service.configure(config);
  const resolver = new FakeResolver();
  const dns = new DnsDiscovery(service, config.discovery!, resolver.resolve, logger);
  return { capture, service, resolver, dns };
}

const origins = (service: UpstreamService) => service.instances.map((i) => i.origin);

function dnsError(code: string): Error {
  return Object.assign(new Error(`getaddrinfo ${code}`), { code });
}

describe('DnsDiscovery', () => {
  it('makes one instance per address, IPv6 addresses bracketed, duplicates once', async () => {
    const { service, resolver, dns } = setup();
    assert.deepEqual(origins(service), [], 'nothing before the first resolution');
    resolver.answer = ['10.1.0.7', 'fd00::1', '10.1.0.5', '10.1.0.7'];
    await dns.refresh();
    assert.deepEqual(resolver.asked, ['chat-history-headless.platform.svc.cluster.local']);
    assert.deepEqual(origins(service).sort(), ['http://10.1.0.5:8002', 'http://10.1.0.7:8002', 'http://[fd00::1]:8002']);
    assert.ok(service.instances.every((i) => i.weight === 1 && i.healthy));
    // The origins are URLs the pools can use.
    for (const origin of origins(service)) assert.equal(new URL(origin).origin, origin);
  });

  it('uses the configured scheme and port', async () => {
    const { service, resolver, dns } = setup({ scheme: 'https', port: 443 });
    resolver.answer = ['::1', '127.0.0.1'];
    await dns.refresh();
    assert.deepEqual(origins(service).sort(), ['https://127.0.0.1:443', 'https://[::1]:443']);
  });

  it('picks up an address that appears or disappears, keeping the Instance objects of the others', async () => {
    const { service, resolver, dns, capture } = setup();
    resolver.answer = ['10.1.0.5', '10.1.0.6'];
    await dns.refresh();
    const [a, b] = service.instances;
    a!.requests = 12;
    a!.active = 1;
    a!.failures.status = 2;
    b!.healthy = false;
    b!.ejections = 2;

    resolver.answer = ['10.1.0.6', '10.1.0.8', '10.1.0.5'];
    await dns.refresh();
    assert.deepEqual(origins(service).sort(), ['http://10.1.0.5:8002', 'http://10.1.0.6:8002', 'http://10.1.0.8:8002']);
    assert.ok(service.instances.includes(a!) && service.instances.includes(b!), 'the same objects');
    assert.equal(a!.requests, 12);
    assert.equal(a!.active, 1);
    assert.equal(a!.failures.status, 2);
    assert.equal(b!.healthy, false);
    assert.equal(b!.ejections, 2);
    const added = service.instances.find((i) => i.origin === 'http://10.1.0.8:8002')!;
    assert.equal(added.healthy, true);
    assert.equal(added.requests, 0);

    resolver.answer = ['10.1.0.8', '10.1.0.6'];
    await dns.refresh();
    assert.deepEqual(origins(service).sort(), ['http://10.1.0.6:8002', 'http://10.1.0.8:8002']);
    assert.ok(service.instances.includes(b!) && service.instances.includes(added));
    assert.equal(b!.ejections, 2);

    const changes = capture.messages('INFO', 'service instances changed');
    assert.deepEqual(
      changes.map((l) => ({ added: l.added, removed: l.removed, instances: l.instances })),
      [
        { added: ['http://10.1.0.5:8002', 'http://10.1.0.6:8002'], removed: [], instances: 2 },
        { added: ['http://10.1.0.8:8002'], removed: [], instances: 3 },
        { added: [], removed: ['http://10.1.0.5:8002'], instances: 2 },
      ],
    );
    // An unchanged answer (in another order) changes nothing and logs nothing.
    const list = service.instances;
    resolver.answer = ['10.1.0.6', '10.1.0.8'];
    await dns.refresh();
    assert.equal(service.instances.length, list.length);
    assert.ok(list.every((inst, i) => service.instances[i] === inst));
    assert.equal(capture.messages('INFO', 'service instances changed').length, 3);
  });

  it('keeps the last instances when resolution fails or finds nothing, with one WARN per failing spell', async () => {
    const { service, resolver, dns, capture } = setup();
    resolver.answer = ['10.1.0.5', '10.1.0.6'];
    await dns.refresh();
    const known = [...service.instances];

    resolver.answer = dnsError('ENOTFOUND');
    for (let i = 0; i < 5; i++) await dns.refresh();
    resolver.answer = [];
    for (let i = 0; i < 5; i++) await dns.refresh();
    resolver.answer = dnsError('EAI_AGAIN');
    await dns.refresh();
    assert.equal(resolver.asked.length, 12);
    assert.deepEqual([...service.instances], known, 'the last known instances stay');
    const warns = capture.messages('WARN', FAILED);
    assert.equal(warns.length, 1, 'one line for the spell, not one per round');
    assert.match(String(warns[0]!.detail), /ENOTFOUND/);
    assert.equal(warns[0]!.instances, 2);
    assert.equal(warns[0]!.upstream_service, 'chat-history');

    resolver.answer = ['10.1.0.6'];
    await dns.refresh();
    assert.equal(capture.messages('INFO', 'service discovery resolves again').length, 1);
    assert.deepEqual(origins(service), ['http://10.1.0.6:8002']);
    assert.equal(service.instances[0], known[1]);

    // A new failing spell gets a line of its own.
    resolver.answer = [];
    await dns.refresh();
    await dns.refresh();
    const after = capture.messages('WARN', FAILED);
    assert.equal(after.length, 2);
    assert.match(String(after[1]!.detail), /no address/);
    assert.deepEqual(origins(service), ['http://10.1.0.6:8002']);
  });

  it('leaves a service empty (one WARN) when the first resolution fails', async () => {
    const { service, resolver, dns, capture } = setup();
    resolver.answer = dnsError('ENOTFOUND');
    await dns.refresh();
    await dns.refresh();
    assert.equal(service.instances.length, 0);
    assert.equal(service.pick(undefined, performance.now(), null), null);
    assert.equal(capture.messages('WARN', FAILED).length, 1);
    resolver.answer = ['10.1.0.9'];
    await dns.refresh();
    assert.deepEqual(origins(service), ['http://10.1.0.9:8002']);
  });

  it('re-resolves at its interval once started, and stops', async () => {
    const { service, resolver, dns } = setup({ intervalMs: 20 });
    resolver.answer = ['10.1.0.5'];
    await dns.start();
    assert.deepEqual(origins(service), ['http://10.1.0.5:8002'], 'start resolves once before it returns');
    resolver.answer = ['10.1.0.5', '10.1.0.6'];
    try {
      await until('the new address to be picked up', 5_000, async () => (service.instances.length === 2 ? true : undefined), 10);
      const rounds = resolver.asked.length;
      await until('another round', 5_000, async () => (resolver.asked.length > rounds ? true : undefined), 10);
    } finally {
      dns.stop();
    }
    // Once stopped, a resolution (such as a round under way when stop() came) changes nothing.
    resolver.answer = ['10.9.9.9'];
    await dns.refresh();
    assert.deepEqual(origins(service).sort(), ['http://10.1.0.5:8002', 'http://10.1.0.6:8002']);
  });
});
