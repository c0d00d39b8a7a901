import type { ServiceConfig } from './service-schema.js';
import type { Logger } from '../observability/logger.js';
import { DnsDiscovery, systemResolve, type Resolve } from './discovery.js';
import { HealthChecker } from './health-checker.js';
import { UpstreamService } from './service.js';

/** How long a new discovered service waits for its first resolution before it goes live anyway. */
const FIRST_RESOLUTION_MS = 5_000;

interface Managed {
  service: UpstreamService;
  checker: HealthChecker;
  discovery: DnsDiscovery | null;
}

/** The services of a routes file, made ready but not yet live: `commit` puts them in place. */
export interface ServicePlan {
  readonly services: ReadonlyMap<string, UpstreamService>;
  readonly configs: Readonly<Record<string, ServiceConfig>>;
  readonly fresh: ReadonlyMap<string, Managed>;
}

/**
 * Every upstream service, by name, across config reloads. A reload prepares the new file's
 * services first (new ones configured and resolved, running ones untouched), and only when the
 * whole new config has compiled does `commit` re-configure the running ones and retire the
 * services the file no longer names, in the same tick as the routes swap.
 */
export class UpstreamRegistry {
  private readonly managed = new Map<string, Managed>();

  constructor(
    private readonly logger: Logger,
    private readonly resolve: Resolve = systemResolve,
    /** CAs for https:// instances (UPSTREAM_CA_FILE); undefined: the system's. */
    private readonly ca?: Buffer,
  ) {}

  /** The live services, in the order the config named them. */
  list(): UpstreamService[] {
    return [...this.managed.values()].map((m) => m.service);
  }

  async prepare(configs: Record<string, ServiceConfig>): Promise<ServicePlan> {
    const services = new Map<string, UpstreamService>();
    const fresh = new Map<string, Managed>();
    const firstResolutions: Array<Promise<void>> = [];
    for (const [name, config] of Object.entries(configs)) {
      const running = this.managed.get(name);
      if (running !== undefined) {
        services.set(name, running.service);
        continue;
      }
      const service = new UpstreamService(name, this.logger, this.ca);
      service.configure(config);
      const discovery = config.discovery ? new DnsDiscovery(service, config.discovery, this.resolve, this.logger) : null;
      if (discovery !== null) firstResolutions.push(discovery.refresh());
      services.set(name, service);
      fresh.set(name, { service, checker: new HealthChecker(service, this.ca), discovery });
    }
    await withDeadline(Promise.all(firstResolutions), FIRST_RESOLUTION_MS);
    return { services, configs, fresh };
  }

  /** Puts a prepared plan live. Synchronous, so that it lands in the same tick as the routes. */
  commit(plan: ServicePlan): void {
    for (const [name, managed] of this.managed) {
      const config = plan.configs[name];
      if (config === undefined) {
        this.retire(name, managed);
        continue;
      }
      managed.service.configure(config);
      managed.discovery = this.rediscover(managed, config);
    }
    for (const [name, managed] of plan.fresh) {
      this.managed.set(name, managed);
      managed.checker.start();
      if (managed.discovery !== null) {
        const discovery = managed.discovery;
        void discovery.start();
      }
    }
  }

  /** Forgets a plan that will not go live (its new services never served a request). */
  discard(plan: ServicePlan): void {
    for (const managed of plan.fresh.values()) {
      managed.discovery?.stop();
      void managed.service.destroy();
    }
  }

  /** Stops the checks and closes every connection once its requests are done. */
  async close(): Promise<void> {
    const all = [...this.managed.values()];
    this.managed.clear();
    for (const m of all) {
      m.checker.stop();
      m.discovery?.stop();
    }
    await Promise.allSettled(all.map((m) => m.service.close()));
  }

  private rediscover(managed: Managed, config: ServiceConfig): DnsDiscovery | null {
    const current = managed.discovery;
    const next = config.discovery;
    if (current !== null && next !== undefined && sameDiscovery(current.config, next)) return current;
    current?.stop();
    if (next === undefined) return null;
    const discovery = new DnsDiscovery(managed.service, next, this.resolve, this.logger);
    void discovery.start();
    return discovery;
  }

  private retire(name: string, managed: Managed): void {
    this.managed.delete(name);
    managed.checker.stop();
    managed.discovery?.stop();
    // Requests already on their way to it finish first; the pools close after them.
    void managed.service.close();
    this.logger.info({ upstream_service: name }, 'service removed from the config');
  }
}

function sameDiscovery(a: NonNullable<ServiceConfig['discovery']>, b: NonNullable<ServiceConfig['discovery']>): boolean {
  return a.host === b.host && a.port === b.port && a.scheme === b.scheme && a.intervalMs === b.intervalMs;
}

async function withDeadline(work: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([work, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}
