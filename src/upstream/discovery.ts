import { lookup } from 'node:dns/promises';
import { isIPv6 } from 'node:net';
import type { ServiceConfig } from './service-schema.js';
import type { Logger } from '../observability/logger.js';
import type { UpstreamService } from './service.js';

export type DiscoveryConfig = NonNullable<ServiceConfig['discovery']>;

/** Every address of a name, as the system resolver gives them (so /etc/hosts counts too). */
export type Resolve = (host: string) => Promise<string[]>;

export const systemResolve: Resolve = async (host) => (await lookup(host, { all: true })).map((a) => a.address);

/**
 * Keeps a service's instances equal to the addresses of a DNS name (a Kubernetes headless
 * service has one per ready pod), re-resolved at an interval. When resolution fails or finds
 * nothing, the last known instances stay: a DNS hiccup must not empty a service.
 */
export class DnsDiscovery {
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private failing = false;

  constructor(
    private readonly service: UpstreamService,
    public config: DiscoveryConfig,
    private readonly resolve: Resolve,
    private readonly logger: Logger,
  ) {}

  /** Resolves once now; later rounds follow at the interval. */
  async start(): Promise<void> {
    await this.refresh();
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
  }

  async refresh(): Promise<void> {
    const { host, port, scheme } = this.config;
    let addresses: string[];
    try {
      addresses = await this.resolve(host);
    } catch (err) {
      this.fail(`cannot resolve ${host}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return;
    }
    if (this.stopped) return;
    if (addresses.length === 0) {
      this.fail(`${host} resolved to no address`);
      return;
    }
    if (this.failing) this.logger.info({ upstream_service: this.service.name, host }, 'service discovery resolves again');
    this.failing = false;
    const origins = [...new Set(addresses)].sort().map((a) => ({ origin: `${scheme}://${isIPv6(a) ? `[${a}]` : a}:${port}`, weight: 1 }));
    const { added, removed } = this.service.setInstances(origins);
    if (added.length > 0 || removed.length > 0) {
      this.logger.info({ upstream_service: this.service.name, host, added, removed, instances: origins.length }, 'service instances changed');
    }
  }

  private fail(detail: string): void {
    // One line when resolution starts failing, not one per round.
    if (!this.failing) this.logger.warn({ upstream_service: this.service.name, detail, instances: this.service.instances.length }, 'service discovery failed; keeping the last known instances');
    this.failing = true;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.refresh().finally(() => this.schedule());
    }, this.config.intervalMs);
    this.timer.unref();
  }
}
